"""``accelerator.resume()`` in one process: a first start just starts; a later start continues mid-epoch
from the newest complete checkpoint, bit-identical to a run never stopped; a newest checkpoint that fails
verification is skipped for the one before it; when none fits, the error is raised."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator, ProjectConfiguration
from plait.errors import CheckpointError


def train(project: Path, stop_after: int | None = None, total: int = 14) -> tuple[dict[str, torch.Tensor], object]:
    """Train ``total`` steps (batches of 4 of 24 samples: 6 per epoch), saving every 3 steps; stop early
    after ``stop_after`` steps of this start (a crash: nothing more is saved)."""
    torch.manual_seed(0)
    accelerator = Accelerator(project_config=ProjectConfiguration(
        project_dir=str(project), automatic_checkpoint_naming=True, total_limit=2))
    data = TensorDataset(torch.randn(24, 5, generator=torch.Generator().manual_seed(1)), torch.randn(24, 1))
    loader = DataLoader(data, batch_size=4, shuffle=True)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.5)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    start = accelerator.resume()
    done = start.epoch * len(loader) + start.position
    steps_this_start = 0
    for _epoch in range(start.epoch, 10):
        for inputs, targets in loader:
            if done == total or steps_this_start == stop_after:
                return {k: v.clone() for k, v in model.state_dict().items()}, start
            loss = nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            done += 1
            steps_this_start += 1
            if done % 3 == 0:
                accelerator.save_state()
    raise AssertionError("not reached")


@pytest.fixture(autouse=True)
def _default_sigterm():
    """resume() catches SIGTERM (preemption): give the test process its own handler back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_a_first_start_just_starts_and_a_later_one_continues_bit_identical(tmp_path):
    uninterrupted, first = train(tmp_path / "a")
    assert not first.resumed and (first.epoch, first.position) == (0, 0)

    train(tmp_path / "b", stop_after=8)  # saved after steps 3 and 6; steps 7-8 are lost
    resumed, start = train(tmp_path / "b")

    assert start.resumed and start.directory.endswith("checkpoint_1")
    # Saved after epoch 0's last batch: its pass resumes empty, so the code after the inner loop runs as it would have.
    assert (start.epoch, start.position) == (0, 6)
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


def test_mid_epoch_resume_is_bit_identical(tmp_path):
    uninterrupted, _ = train(tmp_path / "a")
    train(tmp_path / "b", stop_after=10)  # newest checkpoint after step 9: epoch 1, position 3
    resumed, start = train(tmp_path / "b")

    assert (start.epoch, start.position) == (1, 3)
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


def test_a_newest_checkpoint_that_fails_verification_is_skipped_with_a_warning(tmp_path):
    uninterrupted, _ = train(tmp_path / "a")
    train(tmp_path / "b", stop_after=10)  # checkpoint_1 (step 6) and checkpoint_2 (step 9)
    (tmp_path / "b" / "checkpoints" / "checkpoint_2" / "scheduler.pt").write_bytes(b"damaged")

    with pytest.warns(UserWarning, match="not the newer checkpoints that were refused"):
        resumed, start = train(tmp_path / "b")

    assert start.directory.endswith("checkpoint_1")
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name


def test_when_no_checkpoint_fits_the_error_is_raised_and_nothing_starts_afresh(tmp_path):
    train(tmp_path / "b", stop_after=7)
    for manifest in (tmp_path / "b" / "checkpoints").glob("checkpoint_*/plait_checkpoint.json"):
        content = json.loads(manifest.read_text())
        content["format"] = 99
        manifest.write_text(json.dumps(content))

    with pytest.raises(CheckpointError, match="format"):
        train(tmp_path / "b")


def test_resume_needs_automatic_checkpoint_naming():
    accelerator = Accelerator()
    with pytest.raises(ValueError, match="automatic_checkpoint_naming=True"):
        accelerator.resume()


@pytest.mark.parametrize(("micro_steps", "synchronised"), [(3, False), (4, True)])
def test_load_state_restores_whether_the_last_micro_step_synchronised(tmp_path, micro_steps, synchronised):
    """A checkpoint saved between micro-steps resumes mid-accumulation: until the next ``accumulate()``,
    ``sync_gradients`` reads as it did after the saved run's last micro-step (what a backend that cuts its
    graph on it, xla, needs to replay the same steps), not as a fresh run's True."""
    accelerator = Accelerator(gradient_accumulation_steps=2)
    model = nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(micro_steps):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.ones(1, 2)).sum())
            optimizer.step()
            optimizer.zero_grad()
    assert accelerator.sync_gradients is synchronised
    accelerator.save_state(tmp_path / "ckpt")

    fresh = Accelerator(gradient_accumulation_steps=2)
    model2 = nn.Linear(2, 1)
    model2, _ = fresh.prepare(model2, torch.optim.SGD(model2.parameters(), lr=0.1))
    assert fresh.sync_gradients is True
    fresh.load_state(tmp_path / "ckpt")
    assert fresh.sync_gradients is synchronised
    assert fresh.gradient_state.step == micro_steps
