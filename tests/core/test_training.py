"""Numerical oracles of the single-process training loop: accumulation, scheduling, mixed precision."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator, set_seed


def make_data(n: int = 16, features: int = 6) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, features, generator=g)
    return TensorDataset(x, x @ torch.randn(features, 1, generator=g) + 0.1)


def make_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))


def test_accumulating_four_micro_batches_equals_one_batch_of_sixteen() -> None:
    data = make_data(16 * 5)
    reference = make_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for x, y in DataLoader(data, batch_size=16):
        nn.functional.mse_loss(reference(x), y).backward()
        ref_opt.step()
        ref_opt.zero_grad()

    accelerator = Accelerator(gradient_accumulation_steps=4)
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=4))
    steps = 0
    for x, y in loader:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            steps += accelerator.sync_gradients
    assert steps == 5
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    # The oracle can fail: the same run stepping every micro-batch is far from the reference.
    unaccumulated = make_model()
    opt = torch.optim.SGD(unaccumulated.parameters(), lr=0.1)
    for x, y in DataLoader(data, batch_size=4):
        nn.functional.mse_loss(unaccumulated(x), y).backward()
        opt.step()
        opt.zero_grad()
    assert max((p - q).abs().max().item() for p, q in zip(unaccumulated.parameters(), reference.parameters())) > 1e-3


def test_sync_after_every_kth_batch_and_on_the_last_one() -> None:
    accelerator = Accelerator(gradient_accumulation_steps=4)
    model = nn.Linear(6, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, loader, scheduler = accelerator.prepare(
        model, optimizer, DataLoader(make_data(10), batch_size=1), scheduler
    )
    for _epoch in range(2):
        synced, weights = [], []
        for batch, (x, y) in enumerate(loader, start=1):
            with accelerator.accumulate(model):
                accelerator.backward(nn.functional.mse_loss(model(x), y))
                before = model.weight.detach().clone()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                if accelerator.sync_gradients:
                    synced.append(batch)
                weights.append(not torch.equal(before, model.weight))
        assert synced == [4, 8, 10]
        assert [i + 1 for i, changed in enumerate(weights) if changed] == [4, 8, 10]
    # The scheduler stepped only with the optimizer: 3 real steps per epoch.
    assert scheduler.scheduler.last_epoch == 6
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1 * 0.5**6)


def test_loss_is_divided_by_accumulation_steps() -> None:
    accelerator = Accelerator(gradient_accumulation_steps=4)
    model = accelerator.prepare(nn.Linear(2, 1, bias=False))
    with accelerator.accumulate(model):
        accelerator.backward(model(torch.ones(1, 2)).sum())
    torch.testing.assert_close(model.weight.grad, torch.full((1, 2), 0.25))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_step_scheduler_with_optimizer_false_steps_every_call() -> None:
    accelerator = Accelerator(gradient_accumulation_steps=2, step_scheduler_with_optimizer=False)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    for _ in range(3):
        with accelerator.accumulate(model):
            optimizer.step()
            scheduler.step()
    assert scheduler.get_last_lr()[0] == pytest.approx(0.125)


def train_regression(mixed_precision: str, steps: int = 60) -> tuple[list[float], nn.Module, Accelerator]:
    set_seed(0)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=True)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(make_data(64), batch_size=16))
    losses = []
    while len(losses) < steps:
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    return losses, model, accelerator


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_close_to_fp32(precision: str) -> None:
    fp32_losses, _, _ = train_regression("no")
    losses, model, accelerator = train_regression(precision)
    assert losses[-1] < 0.1 * losses[0]
    assert losses[-1] == pytest.approx(fp32_losses[-1], rel=0.5, abs=0.05)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    with accelerator.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    # The prepared forward runs in reduced precision and hands back fp32.
    assert model(torch.ones(1, 6)).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert (accelerator.scaler is not None) == (precision == "fp16")


def test_fp16_skips_the_step_and_the_scheduler_on_inf_gradients() -> None:
    accelerator = Accelerator(mixed_precision="fp16", cpu=True)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    before = copy.deepcopy(model.state_dict())
    scale = accelerator.scaler.get_scale()
    accelerator.backward(model(torch.full((1, 2), 1e5)).sum() * 1e30)  # overflows fp16
    optimizer.step()
    scheduler.step()
    assert accelerator.optimizer_step_was_skipped
    assert accelerator.scaler.get_scale() < scale
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert scheduler.get_last_lr()[0] == pytest.approx(0.1)
    optimizer.zero_grad()
    accelerator.backward(nn.functional.mse_loss(model(torch.ones(1, 2)), torch.zeros(1, 1)))
    optimizer.step()
    scheduler.step()
    assert not accelerator.optimizer_step_was_skipped
    assert scheduler.get_last_lr()[0] == pytest.approx(0.05)


def test_fp16_clip_grad_norm_sees_unscaled_gradients() -> None:
    set_seed(0)
    reference = nn.Linear(4, 1)
    model = copy.deepcopy(reference)
    x = torch.full((2, 4), 0.01)  # small enough that the first scaled fp16 backward does not overflow
    nn.functional.mse_loss(reference(x), torch.zeros(2, 1)).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 1e9)

    accelerator = Accelerator(mixed_precision="fp16", cpu=True)
    model, optimizer = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    accelerator.backward(nn.functional.mse_loss(model(x), torch.zeros(2, 1)))
    norm = accelerator.clip_grad_norm_(model.parameters(), 1e9)
    torch.testing.assert_close(norm, expected, rtol=1e-2, atol=1e-3)
    optimizer.step()  # the scaler does not unscale twice
    assert not accelerator.optimizer_step_was_skipped


def test_bad_arguments_name_the_value_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"mixed_precision='fp32'.*'no', 'fp16', 'bf16'"):
        Accelerator(mixed_precision="fp32")
    with pytest.raises(ValueError, match=r"gradient_accumulation_steps=0.*at least 1"):
        Accelerator(gradient_accumulation_steps=0)
    with pytest.raises(ValueError, match=r"rng_types contains 'dice'"):
        Accelerator(rng_types=["dice"])
