"""Two real processes (gloo, started by torch's elastic agent): one run per tracker, all of it on rank 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from trackers_readers import read_comet_archives, read_tensorboard, read_wandb_runs
from trackers_workers import CONFIG, two_processes

from plait.testing import run_processes

# Two processes need a multi-process backend (core's built-in one runs a single process).
pytest.importorskip("plait_ddp", reason="the two-process test needs plait-ddp (pip install plait[ddp])")


def test_two_processes_create_exactly_one_run_per_tracker_and_the_other_rank_does_no_tracker_work(
    tmp_path: Path,
) -> None:
    rank0, rank1 = run_processes(two_processes, 2, args=(str(tmp_path),))

    hooks = ("plait_tracker_start", "plait_tracker_log", "plait_tracker_finish")
    assert rank0["implementations"] == dict.fromkeys(hooks, 3)
    assert rank0["tracker plugins"] == ["plait.trackers:comet_ml", "plait.trackers:tensorboard", "plait.trackers:wandb"]
    assert rank0["unwrapped"] == "Run"
    # rank 1: no tracker plugin loaded, no implementation to call, no tracker library even imported
    assert rank1["implementations"] == dict.fromkeys(hooks, 0)
    assert rank1["tracker plugins"] == []
    assert rank1["imported"] == []
    assert rank1["unwrapped"] == "GeneralTracker"  # HF Accelerate's no-op tracker off the main process
    assert rank0["losses"] != rank1["losses"]  # each rank trained on its own shard

    run_dir = tmp_path / "two"
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1
    [wandb_run] = read_wandb_runs(run_dir)
    [archive] = read_comet_archives(run_dir)

    losses = rank0["losses"]
    steps = list(range(len(losses)))
    board = read_tensorboard(run_dir)
    assert [(step, value) for step, value in board.scalars["loss"]] == [
        (step, pytest.approx(loss, rel=1e-6)) for step, loss in zip(steps, losses)
    ]
    assert board.scalars["rank"] == [(len(losses), 0.0)]
    assert board.hparams == {**{"lr": 0.1, "batch_size": 4, "optimizer/name": "sgd", "optimizer/momentum": 0.0,
                                "amp": False}, "processes": 2}
    assert wandb_run.config == {**CONFIG, "processes": 2}
    assert [row["loss"] for row in wandb_run.history if "loss" in row] == pytest.approx(losses, rel=1e-6)
    assert [row["rank"] for row in wandb_run.history if "rank" in row] == [0]
    assert archive.parameters["processes"] == 2
    assert archive.metrics["rank"] == [(len(losses), 0)]
    assert [value for _, value in archive.metrics["loss"]] == pytest.approx(losses, rel=1e-6)
