"""Model-side helpers of the Accelerator in one process: autocast and mixed-precision forward,
unwrapping, gradient clipping and unscaling, skipped fp16 steps, no_sync, and exports
(save_model, save, get_state_dict)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model

from plait import Accelerator


class RecordsMatmulDtype(torch.nn.Module):
    """A linear layer that remembers the dtype its matmul ran in, and returns several outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(8, 4)
        self.inner_dtype: torch.dtype | None = None

    def forward(self, x):
        y = self.linear(x)
        self.inner_dtype = y.dtype
        return {"logits": y, "extra": (y * 2, torch.argmax(y, dim=-1))}


def inputs():
    torch.manual_seed(1)
    return torch.randn(16, 8)


def fp32_reference(model: RecordsMatmulDtype, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, model.linear.weight, model.linear.bias)


# --------------------------------------------------------------------------- autocast


@pytest.mark.parametrize(
    "mixed_precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("no", torch.float32)]
)
def test_autocast_runs_matmuls_in_the_configured_precision(mixed_precision, dtype):
    accelerator = Accelerator(cpu=True, mixed_precision=mixed_precision)
    a, b = torch.randn(4, 4), torch.randn(4, 4)

    with accelerator.autocast():
        inside = a @ b
    outside = a @ b

    assert inside.dtype == dtype
    assert outside.dtype == torch.float32


def test_prepared_model_under_bf16_computes_in_bf16_and_returns_float32():
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = accelerator.prepare(RecordsMatmulDtype())
    x = inputs()

    outputs = model(x)

    assert model.inner_dtype == torch.bfloat16
    assert set(outputs) == {"logits", "extra"} and isinstance(outputs["extra"], tuple)
    assert outputs["logits"].dtype == torch.float32
    assert outputs["extra"][0].dtype == torch.float32
    assert outputs["extra"][1].dtype == torch.int64  # integers are left alone
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = fp32_reference(model, x).float()
    assert torch.equal(outputs["logits"], expected)
    assert not torch.equal(outputs["logits"], fp32_reference(model, x))  # bf16 rounding is visible


def test_prepared_model_without_mixed_precision_is_exact():
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(RecordsMatmulDtype())
    x = inputs()
    assert torch.equal(model(x)["logits"], fp32_reference(model, x))
    assert model.inner_dtype == torch.float32


# --------------------------------------------------------------------------- unwrap_model, get_state_dict


def test_unwrap_model_keeps_the_mixed_precision_forward_by_default():
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = RecordsMatmulDtype()
    prepared = accelerator.prepare(model)

    unwrapped = accelerator.unwrap_model(prepared)

    assert unwrapped is model
    unwrapped(inputs())
    assert unwrapped.inner_dtype == torch.bfloat16


def test_unwrap_model_without_fp32_wrapper_restores_the_original_forward():
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = accelerator.prepare(RecordsMatmulDtype())
    x = inputs()

    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    outputs = unwrapped(x)

    assert unwrapped.inner_dtype == torch.float32
    assert torch.equal(outputs["logits"], fp32_reference(unwrapped, x))


def test_unwrap_model_restores_a_forward_the_user_had_replaced():
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = torch.nn.Linear(4, 4)
    model.forward = lambda x: torch.nn.functional.linear(x, model.weight) + 100.0  # instance-level forward
    prepared = accelerator.prepare(model)
    x = torch.randn(2, 4)
    assert prepared(x).dtype == torch.float32

    unwrapped = accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)

    assert torch.equal(unwrapped(x), x @ model.weight.T + 100.0)


def test_get_state_dict_has_the_models_keys_and_values():
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    prepared = accelerator.prepare(model)

    for unwrap in (True, False):
        state = accelerator.get_state_dict(prepared, unwrap=unwrap)
        assert list(state) == ["0.weight", "0.bias", "2.weight", "2.bias"]
        for key, value in expected.items():
            assert state[key].dtype == torch.float32
            assert torch.equal(state[key], value)


# --------------------------------------------------------------------------- gradients


def copy_with_grads(model: torch.nn.Module) -> torch.nn.Module:
    reference = copy.deepcopy(model)
    for r, p in zip(reference.parameters(), model.parameters()):
        r.grad = p.grad.clone()
    return reference


def model_with_grads(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    x = torch.randn(8, 5)
    return model, x


@pytest.mark.parametrize("norm_type", [2, 1, float("inf")])
def test_clip_grad_norm_returns_the_total_norm_and_clips_like_torch(norm_type):
    accelerator = Accelerator(cpu=True)
    model, x = model_with_grads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward((model(x) ** 2).sum())
    reference = copy_with_grads(model)
    true_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]), ord=norm_type)
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.5, norm_type=norm_type)

    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm=0.5, norm_type=norm_type)

    assert norm.item() == pytest.approx(true_norm.item(), rel=1e-6)
    assert norm.item() == pytest.approx(expected.item(), rel=1e-6)
    assert true_norm.item() > 0.5  # clipping really happened
    for p, r in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(p.grad, r.grad, rtol=1e-6, atol=0)
    clipped = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model.parameters()]), ord=norm_type)
    assert clipped.item() == pytest.approx(0.5, rel=1e-4)


def test_clip_grad_value_clamps_every_gradient():
    accelerator = Accelerator(cpu=True)
    model, x = model_with_grads()
    model = accelerator.prepare(model)
    accelerator.backward((model(x) ** 2).sum())
    reference = copy_with_grads(model)
    torch.nn.utils.clip_grad_value_(reference.parameters(), 0.05)
    largest_before = max(p.grad.abs().max().item() for p in model.parameters())

    accelerator.clip_grad_value_(model.parameters(), clip_value=0.05)

    assert largest_before > 0.05
    assert max(p.grad.abs().max().item() for p in model.parameters()) == pytest.approx(0.05)
    for p, r in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p.grad, r.grad)


def fp16_step_setup():
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    model, x = model_with_grads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward(model(x).float().pow(2).mean())
    return accelerator, model, optimizer


def test_unscale_gradients_divides_by_the_loss_scale_once():
    accelerator, model, optimizer = fp16_step_setup()
    scale = accelerator.scaler.get_scale()
    scaled = [p.grad.clone() for p in model.parameters()]
    assert scale > 1.0

    accelerator.unscale_gradients()
    accelerator.unscale_gradients(optimizer=optimizer)  # already unscaled: nothing more happens

    for p, s in zip(model.parameters(), scaled):
        assert torch.allclose(p.grad, s / scale, rtol=1e-6, atol=0)


def test_unscale_gradients_without_fp16_changes_nothing():
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model, x = model_with_grads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward(model(x).pow(2).sum())
    before = [p.grad.clone() for p in model.parameters()]

    accelerator.unscale_gradients()

    assert accelerator.scaler is None
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))


def test_fp16_clip_grad_norm_sees_unscaled_gradients_and_step_uses_them():
    accelerator, model, optimizer = fp16_step_setup()
    scale = accelerator.scaler.get_scale()
    unscaled = [p.grad.clone() / scale for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    true_norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in unscaled]))

    norm = accelerator.clip_grad_norm_(model.parameters(), max_norm=1e6)
    optimizer.step()

    assert norm.item() == pytest.approx(true_norm.item(), rel=1e-5)
    assert accelerator.optimizer_step_was_skipped is False
    for p, before, g in zip(model.parameters(), params, unscaled):
        assert torch.allclose(p.detach(), before - 0.1 * g, rtol=1e-5, atol=1e-7)


def test_fp16_step_with_inf_gradients_is_skipped_and_the_scheduler_waits():
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    model, x = model_with_grads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scheduler, optimizer, model = accelerator.prepare(scheduler, optimizer, model)
    before = [p.detach().clone() for p in model.parameters()]
    scale = accelerator.scaler.get_scale()

    accelerator.backward(model(x).float().sum() * float("inf"))
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()

    assert accelerator.optimizer_step_was_skipped is True
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scheduler.get_last_lr() == [0.1]
    assert accelerator.scaler.get_scale() == scale / 2

    accelerator.backward(model(x).float().pow(2).mean())
    optimizer.step()
    scheduler.step()

    assert accelerator.optimizer_step_was_skipped is False
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert scheduler.get_last_lr() == [0.05]


def test_optimizer_step_was_skipped_is_false_in_full_precision():
    accelerator = Accelerator(cpu=True)
    model, x = model_with_grads()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    assert accelerator.optimizer_step_was_skipped is False
    accelerator.backward(model(x).sum())
    optimizer.step()
    assert accelerator.optimizer_step_was_skipped is False


def test_no_sync_lets_gradients_accumulate_locally():
    accelerator = Accelerator(cpu=True)
    model, x = model_with_grads()
    model = accelerator.prepare(model)
    accelerator.backward(model(x).sum())
    once = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    with accelerator.no_sync(model):
        accelerator.backward(model(x).sum())
    accelerator.backward(model(x).sum())

    for p, g in zip(model.parameters(), once):
        assert torch.allclose(p.grad, 2 * g)


# --------------------------------------------------------------------------- save_model


def test_save_model_writes_safetensors_with_the_models_key_names(tmp_path):
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    prepared = accelerator.prepare(model)

    accelerator.save_model(prepared, tmp_path / "export")

    assert sorted(os.listdir(tmp_path / "export")) == ["model.safetensors"]
    saved = load_file(tmp_path / "export" / "model.safetensors")
    assert sorted(saved) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    for key, value in model.state_dict().items():
        assert saved[key].dtype == torch.float32
        assert torch.equal(saved[key], value)
    with safe_open(str(tmp_path / "export" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["format"] == "pt"


def test_save_model_shards_with_an_index(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Sequential(*(torch.nn.Linear(10, 10) for _ in range(3))))
    state = model.state_dict()

    accelerator.save_model(model, tmp_path, max_shard_size=500)  # each layer is 440 bytes

    names = [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    assert sorted(os.listdir(tmp_path)) == [*names, "model.safetensors.index.json"]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 3 * (100 + 10) * 4
    assert set(index["weight_map"]) == set(state)
    assert set(index["weight_map"].values()) == set(names)
    merged = {}
    for name in names:
        shard = load_file(tmp_path / name)
        assert all(index["weight_map"][key] == name for key in shard)
        merged.update(shard)
    assert set(merged) == set(state)
    assert all(torch.equal(merged[key], state[key]) for key in state)


def test_save_model_shard_size_as_a_string(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Sequential(*(torch.nn.Linear(10, 10) for _ in range(3))))

    accelerator.save_model(model, tmp_path, max_shard_size="1KB")  # 1000 bytes: two layers fit, then one

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    assert index["weight_map"]["1.bias"] == "model-00001-of-00002.safetensors"
    assert index["weight_map"]["2.weight"] == "model-00002-of-00002.safetensors"


def test_save_model_again_with_other_sharding_leaves_no_stale_weights(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Sequential(*(torch.nn.Linear(10, 10) for _ in range(3))))

    accelerator.save_model(model, tmp_path)
    accelerator.save_model(model, tmp_path, max_shard_size=500)
    assert "model.safetensors" not in os.listdir(tmp_path)
    assert len(os.listdir(tmp_path)) == 4

    accelerator.save_model(model, tmp_path)
    assert os.listdir(tmp_path) == ["model.safetensors"]


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4, bias=False)
        self.decoder = torch.nn.Linear(4, 4, bias=False)
        self.decoder.weight = self.encoder.weight  # one Parameter, two names


def test_save_model_with_tied_weights_loads_back(tmp_path):
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(3)
    model = accelerator.prepare(Tied())

    accelerator.save_model(model, tmp_path)

    fresh = Tied()
    assert not torch.equal(fresh.encoder.weight, model.encoder.weight)
    missing, unexpected = load_model(fresh, tmp_path / "model.safetensors")
    assert not missing and not unexpected
    assert torch.equal(fresh.encoder.weight, model.encoder.weight)
    assert torch.equal(fresh.decoder.weight, model.encoder.weight)
    assert fresh.decoder.weight is fresh.encoder.weight


def test_save_model_without_safetensors(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))

    accelerator.save_model(model, tmp_path, safe_serialization=False)

    assert os.listdir(tmp_path) == ["pytorch_model.bin"]
    loaded = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
    assert set(loaded) == {"weight", "bias"}
    assert torch.equal(loaded["weight"], model.weight) and torch.equal(loaded["bias"], model.bias)


# --------------------------------------------------------------------------- save


def test_save_with_torch_save(tmp_path):
    accelerator = Accelerator(cpu=True)
    path = tmp_path / "extra.pt"

    accelerator.save({"step": 12, "ema": torch.tensor([1.0, 2.0])}, path)

    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 12 and loaded["ema"].tolist() == [1.0, 2.0]
    assert os.listdir(tmp_path) == ["extra.pt"]


def test_save_with_safetensors(tmp_path):
    accelerator = Accelerator(cpu=True)
    path = tmp_path / "weights.safetensors"

    accelerator.save({"w": torch.arange(4.0)}, path, safe_serialization=True)

    assert load_file(path)["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert os.listdir(tmp_path) == ["weights.safetensors"]


def test_save_is_atomic_when_it_fails(tmp_path):
    accelerator = Accelerator(cpu=True)
    path = tmp_path / "weights.safetensors"
    accelerator.save({"w": torch.ones(2)}, path, safe_serialization=True)

    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error type for a non-tensor value)
        accelerator.save({"w": torch.zeros(2), "step": 3}, path, safe_serialization=True)

    assert os.listdir(tmp_path) == ["weights.safetensors"]  # no temporary file left behind
    assert load_file(path)["w"].tolist() == [1.0, 1.0]  # the previous file is intact
