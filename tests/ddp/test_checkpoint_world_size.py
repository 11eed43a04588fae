"""A checkpoint saved by 2 processes, loaded by 1: a dataloader position saved mid-epoch counts each process's
batches, so it is refused (naming both world sizes) with nothing changed; one saved at an epoch boundary loads.

One real launch for the module: ``checkpoint_world_size_worker.py`` under ``torchrun --nproc-per-node 2`` over
gloo; the loads run here, in this one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import checkpoint_world_size_worker as worker
from ddp_helpers import clean_environment  # noqa: F401

from plait import Accelerator, CheckpointError
from plait.testing import run_script


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("world_size")
    run_script(Path(worker.__file__), 2, args=[str(out)], timeout=120)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_two_processes_saved_mid_epoch_and_at_its_end(saved: Any) -> None:
    out, ranks = saved
    assert [r["num_processes"] for r in ranks] == [2, 2] and ranks[0]["backend"] == "ddp"
    assert sorted(ranks[0]["seen"] + ranks[1]["seen"]) == list(range(16))  # 8 batches each
    assert len(ranks[0]["seen"]) == 8
    state = torch.load(out / "mid_epoch" / "dataloader.pt", weights_only=True)
    assert (state["epoch"], state["position"]) == (0, 3)


def test_a_mid_epoch_position_of_another_world_size_is_refused_and_nothing_changes(saved: Any) -> None:
    out, _ = saved
    accelerator = Accelerator(cpu=True)
    model, optimizer, loader = worker.build(accelerator)
    with torch.no_grad():
        model.weight.fill_(5.0)
    weight, bias = model.weight.detach().clone(), model.bias.detach().clone()
    with pytest.raises(CheckpointError, match=r"saved by 2 processes and this run has 1: dataloader 0 was saved "
                                              r"mid-epoch \(epoch 0, 3 batches into each process's share\).*"
                                              r"nothing was loaded \(resume with 2 processes"):
        accelerator.load_state(out / "mid_epoch")
    assert torch.equal(model.weight, weight) and torch.equal(model.bias, bias)
    assert (loader.epoch, loader.position) == (0, 0)
    assert optimizer.state_dict()["state"] == {}


def test_an_epoch_boundary_of_another_world_size_loads(saved: Any) -> None:
    out, ranks = saved
    accelerator = Accelerator(cpu=True)
    model, _, loader = worker.build(accelerator)
    accelerator.load_state(out / "epoch_end")
    assert (loader.epoch, loader.position) == (1, 0)
    assert model.weight.detach().flatten().tolist() == ranks[0]["weight"]
    # The next epoch is a whole pass over the data, as one process sees it.
    assert sorted(int(b) for b in loader) == list(range(16))
