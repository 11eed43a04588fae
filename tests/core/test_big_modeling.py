"""plait.big_modeling: models built on the meta device (or another), then loaded exactly from files; the
big-model inference functions importable and refusing with what is closest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from plait.errors import NotSupportedError
from plait.testing import identical

from plait.big_modeling import (  # isort: skip
    cpu_offload, cpu_offload_with_hook, disk_offload, dispatch_model, get_balanced_memory, get_max_memory,
    infer_auto_device_map, init_empty_weights, init_on_device, load_checkpoint_and_dispatch, load_checkpoint_in_model,
)

META = torch.device("meta")
CPU = torch.device("cpu")


class Net(nn.Module):
    """Parameters, a frozen parameter, buffers (persistent and not) and tied weights."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.body = nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6))
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.scale = nn.Parameter(torch.full((3,), 2.0), requires_grad=False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.embed(ids)))


def trained() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    net = Net()
    net.body[1].running_mean.uniform_()
    net.body[1].num_batches_tracked += 7
    return {k: v.clone() for k, v in net.state_dict().items()}


def devices(net: nn.Module) -> tuple[set[torch.device], set[torch.device]]:
    return {p.device for p in net.parameters()}, {b.device for b in net.buffers()}


def test_init_empty_weights_puts_parameters_on_meta_and_buffers_only_when_asked(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ACCELERATE_INIT_INCLUDE_BUFFERS", raising=False)
    with init_empty_weights():
        net = Net()
    assert devices(net) == ({META}, {CPU})
    assert net.head.weight is net.embed.weight and not net.scale.requires_grad
    assert nn.Linear.register_parameter is nn.Module.register_parameter  # the patch is undone
    with init_empty_weights(include_buffers=True):
        net = Net()
        made_inside = torch.ones(2)
    assert devices(net) == ({META}, {META}) and made_inside.device == META
    assert torch.ones(2).device == CPU


def test_the_environment_variable_sets_include_buffers(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ACCELERATE_INIT_INCLUDE_BUFFERS", "1")
    with init_empty_weights():
        net = Net()
    assert devices(net) == ({META}, {META})


def test_init_on_device_builds_there(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("ACCELERATE_INIT_INCLUDE_BUFFERS", raising=False)
    with init_on_device("meta"):
        net = Net()
    assert devices(net) == ({META}, {CPU})
    with init_on_device(torch.device("cpu"), include_buffers=True):
        net = Net()
    assert devices(net) == ({CPU}, {CPU})
    with pytest.raises(ValueError, match=r"init_on_device\(device='nowhere'\): expected a torch.device"), \
            init_on_device("nowhere"):
        pass


@pytest.mark.parametrize("kind", ["safetensors", "bin", "folder_bin", "sharded", "index_file"])
def test_an_empty_model_loads_exact_values(tmp_path: Path, kind: str):
    state = trained()
    if kind == "safetensors":
        from plait.utils import save

        save(state, tmp_path / "model.safetensors", safe_serialization=True)  # tied weights stored once
        checkpoint: Path = tmp_path / "model.safetensors"
    elif kind in ("bin", "folder_bin"):
        torch.save(state, tmp_path / "pytorch_model.bin")
        checkpoint = tmp_path / "pytorch_model.bin" if kind == "bin" else tmp_path
    else:
        keys = list(state)
        shards = {"model-00001-of-00002.safetensors": keys[:4], "model-00002-of-00002.safetensors": keys[4:]}
        for name, names in shards.items():
            save_file({k: state[k].contiguous() for k in names if k != "head.weight"}, str(tmp_path / name))
        weight_map = {k: name for name, names in shards.items() for k in names if k != "head.weight"}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        checkpoint = tmp_path if kind == "sharded" else tmp_path / "model.safetensors.index.json"
    with init_empty_weights():
        net = Net()
    load_checkpoint_in_model(net, checkpoint)
    assert devices(net) == ({CPU}, {CPU})
    assert identical(net.state_dict(), state)
    assert net.head.weight is net.embed.weight  # tied again, also where the file holds one of the names
    assert not net.scale.requires_grad and net.body[0].weight.requires_grad
    assert type(net.body[0].weight) is nn.Parameter
    net.eval()
    reference = Net().eval()
    reference.load_state_dict(state)
    ids = torch.tensor([[1, 2, 3]]).view(-1)
    assert torch.equal(net(ids), reference(ids))


def test_a_real_model_is_loaded_in_place_and_dtype_converts(tmp_path: Path):
    state = trained()
    torch.save(state, tmp_path / "w.bin")
    net = Net()
    weight = net.body[0].weight
    load_checkpoint_in_model(net, tmp_path / "w.bin")
    assert net.body[0].weight is weight and identical(net.state_dict(), state)  # optimizers keep their tensors
    load_checkpoint_in_model(net, tmp_path / "w.bin", dtype="float16", keep_in_fp32_modules=["body"])
    assert net.embed.weight.dtype == torch.float16 and net.body[0].weight.dtype == torch.float32
    assert torch.equal(net.embed.weight, state["embed.weight"].half())
    assert net.body[1].num_batches_tracked.dtype == torch.int64 and int(net.body[1].num_batches_tracked) == 7
    load_checkpoint_in_model(net, tmp_path / "w.bin", device_map={"": "cpu"}, dtype=torch.float32)
    assert identical(net.state_dict(), state)


def test_mismatches_are_named_before_anything_is_loaded(tmp_path: Path):
    state = trained()
    torch.save({**state, "extra": torch.ones(1)}, tmp_path / "extra.bin")
    net = Net()
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]; nothing was loaded"):
        load_checkpoint_in_model(net, tmp_path / "extra.bin", strict=True)
    with pytest.warns(UserWarning, match="not used by Net: \\['extra'\\]"):
        load_checkpoint_in_model(net, tmp_path / "extra.bin")
    assert identical(net.state_dict(), state)
    wrong = {**state, "body.0.weight": torch.ones(6, 5)}
    torch.save(wrong, tmp_path / "wrong.bin")
    fresh = Net()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=r"'body.0.weight' has shape \(6, 5\) in the checkpoint but \(6, 6\)"):
        load_checkpoint_in_model(fresh, tmp_path / "wrong.bin")
    assert identical(fresh.state_dict(), before)
    with init_empty_weights():
        empty = Net()
    torch.save({k: v for k, v in state.items() if k != "scale"}, tmp_path / "partial.bin")
    with pytest.warns(UserWarning, match=r"no value for \['scale'\], which stay on the meta device"):
        load_checkpoint_in_model(empty, tmp_path / "partial.bin")


def test_bad_checkpoints_say_what_was_expected(tmp_path: Path):
    with pytest.raises(ValueError, match="does not exist: expected a weights file"):
        load_checkpoint_in_model(Net(), tmp_path / "missing.bin")
    with pytest.raises(ValueError, match=r"holds no pytorch_model.bin or model.safetensors and none"):
        load_checkpoint_in_model(Net(), tmp_path)
    for name in ("a.index.json", "b.index.json"):
        (tmp_path / name).write_text("{}")
    with pytest.raises(ValueError, match=r"2 .index.json files \(a.index.json, b.index.json\)"):
        load_checkpoint_in_model(Net(), tmp_path)
    with pytest.raises(ValueError, match="dtype='float17' is not a torch dtype"):
        load_checkpoint_in_model(Net(), tmp_path / "a.index.json", dtype="float17")
    torch.save(trained(), tmp_path / "w.bin")
    with pytest.raises(ValueError, match=r"device_map gives no device for 'scale'"):
        load_checkpoint_in_model(Net(), tmp_path / "w.bin", device_map={"body": "cpu"})
    with pytest.raises(NotSupportedError, match="device_map value 'disk' is not supported by plait"):
        load_checkpoint_in_model(Net(), tmp_path / "w.bin", device_map={"": "disk"})
    with pytest.raises(NotSupportedError, match=r"load_checkpoint_in_model\(offload_state_dict\)"):
        load_checkpoint_in_model(Net(), tmp_path / "w.bin", offload_state_dict=True)


@pytest.mark.parametrize("function", [dispatch_model, load_checkpoint_and_dispatch, infer_auto_device_map,
                                      cpu_offload, cpu_offload_with_hook, disk_offload, get_balanced_memory,
                                      get_max_memory])
def test_big_model_inference_is_refused_with_what_is_closest(function: object):
    name = function.__name__  # type: ignore[attr-defined]
    with pytest.raises(NotSupportedError, match=rf"^{name} is not supported by plait: .*(fsdp|zero)"):
        function(Net(), device_map="auto")  # type: ignore[operator]
    from plait import utils

    if name in utils.__all__:
        assert getattr(utils, name) is function


def test_loading_with_dispatch_names_load_checkpoint_in_model():
    with pytest.raises(NotSupportedError, match=r"load_checkpoint_in_model and move the model with \.to\(device\)"):
        load_checkpoint_and_dispatch(Net(), "x")
