"""Checkpoints of a 2-process run: what save_state writes, and exact resume in a fresh 2-process launch.

The run has a shuffled loader, dropout, a scheduler, a dataset drawing from the
global RNG, python/numpy randomness, and a different seed on each process. The
protocol is HF Accelerate's: load_state, skip_first_batches for the interrupted
epoch, plain iteration afterwards. Two launches for the whole module: the first
runs every configuration uninterrupted and then interrupted (save_state, stop), the
second resumes each.
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
import ddp_workers as W
from ddp_helpers import clean_environment, identical  # noqa: F401

from plait import checkpoint
from plait.testing import run_processes

# (name, gradient_accumulation_steps, global step of the save). 50 samples, batch 4 on 2 processes:
# 7 batches per process per epoch, so step 10 is batch 3 of epoch 1 (and step 9 batch 2).
CONFIGS = [
    ("plain", 1, 10),
    ("accum-boundary", 2, 9),  # saved right after a synchronising micro-step
    ("accum-mid-cycle", 2, 10),  # saved between two micro-steps: local, unsynchronised gradients are state
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("resume")
    first = run_processes(W.resume_first_launch, 2, args=(str(root), CONFIGS))
    second = run_processes(W.resume_second_launch, 2, args=(str(root), CONFIGS))
    return root, first, second


def test_save_state_from_two_processes_writes_each_file_once(runs: Any) -> None:
    root, first, _ = runs
    directory = root / "plain"
    assert first[0]["plain/interrupt"]["saved"] == str(directory)
    assert first[1]["plain/interrupt"]["saved"] == str(directory)
    files = {p.name for p in directory.iterdir()}
    assert files == {
        "model.safetensors", "optimizer.safetensors", "optimizer.pt", "scheduler.pt", "dataloader.pt",
        "random_states_0.pt", "random_states_1.pt", checkpoint.MANIFEST,
    }
    # Model, optimizer and the shared states are written by the main process only; RNG states by each.
    assert sorted(first[0]["plain/written"]) == sorted(
        ["model.safetensors", "optimizer.safetensors", "optimizer.pt", "scheduler.pt", "dataloader.pt",
         "random_states_0.pt"]
    )
    assert first[1]["plain/written"] == ["random_states_1.pt"]
    # The manifest lists every file, with checksums that verify.
    manifest = json.loads((directory / checkpoint.MANIFEST).read_text())
    assert set(manifest["files"]) == files - {checkpoint.MANIFEST}
    assert checkpoint.verify(directory)["metadata"]["num_processes"] == 2
    # No temporary directory is left behind, by either save.
    for rank in first:
        assert rank["plain/leftovers"] == []
        assert rank["accum-mid-cycle/leftovers"] == []
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    # Each process's RNG state is its own (the processes were seeded differently).
    states = [torch.load(directory / f"random_states_{r}.pt", weights_only=True) for r in range(2)]
    assert not torch.equal(states[0]["torch"], states[1]["torch"])


def test_interrupted_runs_stopped_where_expected(runs: Any) -> None:
    _, first, _ = runs
    for name, _, save_at in CONFIGS:
        for rank in first:
            assert rank[f"{name}/full"]["batches_per_epoch"] == 7
            assert len(rank[f"{name}/interrupt"]["seen"]) == save_at
            assert rank[f"{name}/full"]["global_step"] == 7 * W.EPOCHS


@pytest.mark.parametrize(
    "name",
    [
        "plain",
        "accum-boundary",
        "accum-mid-cycle",
    ],
)
def test_resumed_two_process_run_is_bit_identical(runs: Any, name: str) -> None:
    _, first, second = runs
    for r in range(2):
        full, interrupted, resumed = first[r][f"{name}/full"], first[r][f"{name}/interrupt"], second[r][name]
        # The resumed run saw exactly the batches the interrupted one had not.
        assert interrupted["seen"] + resumed["seen"] == full["seen"], f"process {r} saw other batches"
        assert resumed["global_step"] == full["global_step"]
    assert identical(first[0][f"{name}/full"]["params"], first[1][f"{name}/full"]["params"])
    for r in range(2):
        assert identical(second[r][name]["params"], first[r][f"{name}/full"]["params"]), (
            f"{name}: process {r}'s parameters after resume differ from the uninterrupted run"
        )
