"""Checkpoints of the zero backend on 2 processes: DeepSpeed engine checkpoints inside core's atomic checkpoint,
and exact resume at every stage.

Two launches for the whole module: the first runs each configuration uninterrupted
and then interrupted (save_state, stop); the second resumes each in fresh
processes (load_state, skip_first_batches, plain iteration afterwards). The run
has a shuffled loader, dropout, AdamW with a scheduler and a different seed on
each process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import zero_workers as W
from zero_helpers import clean_environment, identical  # noqa: F401

from plait import checkpoint
from plait.testing import run_processes

# (name, options, gradient_accumulation_steps, global micro-step of the save). 5 batches per process per epoch,
# so micro-step 7 is batch 2 of epoch 2 (with accumulation 2: a synchronising micro-step).
CONFIGS: list[tuple[str, dict[str, Any], int, int]] = [
    ("stage1", {"stage": 1}, 1, 7),
    ("stage2", {"stage": 2}, 1, 7),
    ("stage3", {"stage": 3}, 1, 7),
    ("stage2-accum", {"stage": 2}, 2, 7),
    ("stage3-accum", {"stage": 3}, 2, 7),
    ("ddp", {"backend": "ddp"}, 1, 7),  # only saved: loading it under zero must be refused
]
RESUMED = [c for c in CONFIGS if c[0] != "ddp"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("resume")
    first = run_processes(W.resume_first_launch, 2, args=(str(root), CONFIGS))
    second = run_processes(W.resume_second_launch, 2, args=(str(root), CONFIGS))
    return root, first, second


@pytest.mark.parametrize("name", [c[0] for c in RESUMED])
def test_resumed_run_is_bit_identical(runs: Any, name: str) -> None:
    _, first, second = runs
    for r in range(2):
        full, interrupted, resumed = first[r][f"{name}/full"], first[r][f"{name}/interrupt"], second[r][name]
        assert interrupted["seen"] + resumed["seen"] == full["seen"], f"process {r} saw other batches"
        assert resumed["global_step"] == full["global_step"] == 2 * full["batches_per_epoch"]
        assert identical(resumed["params"], full["params"]), f"{name}: process {r} differs from the uninterrupted run"
        assert resumed["lr"] == full["lr"]
    # The oracle can fail: training moved the weights after the save.
    assert not identical(first[0][f"{name}/interrupt"]["params_at_save"], first[0][f"{name}/full"]["params"])


def test_checkpoints_are_loaded_without_unrestricted_pickle(runs: Any) -> None:
    _, _, second = runs
    for r in range(2):
        loads = second[r]["torch_loads"]
        assert any("optim_states" in path for path, _ in loads), "DeepSpeed's files were not read"
        assert all(weights_only for _, weights_only in loads), [p for p, w in loads if not w]


@pytest.mark.parametrize("name,stage", [("stage1", 1), ("stage2", 2), ("stage3", 3)])
def test_engine_checkpoint_inside_core_manifest(runs: Any, name: str, stage: int) -> None:
    root, _, _ = runs
    directory = root / name
    manifest = checkpoint.verify(directory)
    files = set(manifest["files"])
    assert manifest["metadata"]["backend"] == "zero"
    # DeepSpeed's own files (each process's optimizer partition) are in the manifest with checksums...
    assert {f"zero/state/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(2)} <= files
    assert "zero/latest" in files and "zero/plait_zero.json" in files
    # ...beside core's states; no optimizer.pt/model.safetensors of core's default.
    assert {"scheduler.pt", "dataloader.pt", "random_states_0.pt", "random_states_1.pt"} <= files
    assert not files & {"model.safetensors", "optimizer.pt", "optimizer.safetensors"}
    on_disk = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    assert on_disk == files | {checkpoint.MANIFEST}
    info = json.loads((directory / "zero" / "plait_zero.json").read_text())
    assert info["stage"] == stage and info["num_processes"] == 2
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


def test_checkpoint_of_another_stage_names_both(runs: Any) -> None:
    _, _, second = runs
    error = second[0]["stage_error"]
    assert error.startswith("CheckpointError:")
    assert "saved with ZeRO stage 2" in error and "this run uses ZeRO stage 3" in error
    assert "stage=2" in error and "nothing was loaded" in error


def test_checkpoint_of_another_process_count_names_both(runs: Any) -> None:
    root, _, _ = runs
    error = run_processes(W.resume_one_process, 1, args=(str(root),))[0]["processes_error"]
    assert error.startswith("CheckpointError:")
    assert "saved by 2 processes" in error and "this run has 1" in error and "resume with 2 processes" in error


def test_checkpoint_of_another_backend_is_refused(runs: Any) -> None:
    _, _, second = runs
    error = second[0]["ddp_error"]
    assert error.startswith("CheckpointError:") and "saved by backend 'ddp'" in error


def test_save_between_accumulation_micro_steps_is_refused(runs: Any) -> None:
    _, first, _ = runs
    error = first[0]["mid_accumulation_error"]
    assert error.startswith("CheckpointError:") and "sync_gradients is True" in error
    assert first[0]["mid_accumulation_leftovers"] == []
