"""plait-csv-tracker as its users run it: installed, listed by ``plait plugins``, named in ``log_with``, writing
real files from the main process of a two-process job (``plait launch --num-processes 2``), and passed as an
object (HF Accelerate's way)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from plait_csv_tracker import CSVTracker

from plait import Accelerator

TRAIN = Path(__file__).with_name("train.py")
PLAIT = str(Path(sys.executable).with_name("plait"))


def plait(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                      "MASTER_"))}
    return subprocess.run([PLAIT, *args], capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("launched")
    result = plait("launch", "--num-processes", "2", "--cpu", str(TRAIN), str(folder / "project"),
                   str(folder / "logged.json"))
    assert result.returncode == 0, result.stderr[-6000:]
    return folder / "project", json.loads((folder / "logged.json").read_text())


def test_plait_plugins_lists_the_tracker() -> None:
    result = plait("plugins", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = [p for p in json.loads(result.stdout) if p["group"] == "plait.trackers" and p["name"] == "csv"]
    assert entry["distribution"] == "plait-csv-tracker"
    assert entry["status"] == "ok"
    assert {"plait_tracker_start", "plait_tracker_log", "plait_tracker_finish", "plait_tracker_get"} <= set(entry["hooks"])


def test_two_processes_write_one_file_with_every_logged_value_from_the_main_process(launched) -> None:  # type: ignore[no-untyped-def]
    project, expected = launched
    assert expected["processes"] == 2
    assert sorted(p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()) == [
        "regression/hparams.json", "regression/metrics.csv"]
    rows = read_rows(project / "regression" / "metrics.csv")
    # 6 steps per epoch (96 samples, 8 per batch, 2 processes), 3 epochs, and one evaluation row per epoch:
    # each row once, so only the main process wrote.
    losses = [row for row in rows if row["loss"]]
    assert [(int(row["step"]), float(row["loss"])) for row in losses] == [
        (entry["step"], entry["loss"]) for entry in expected["logged"]]  # the very floats logged
    assert len(losses) == 18 and float(losses[-1]["loss"]) < float(losses[0]["loss"]) / 20
    evaluations = [row for row in rows if row["eval/mse"]]
    assert [row["epoch"] for row in evaluations] == ["0", "1", "2"]
    assert float(evaluations[-1]["eval/mse"]) < float(evaluations[0]["eval/mse"])
    assert list(rows[0]) == ["step", "loss", "epoch", "eval/mse", "eval/mae"]
    assert json.loads((project / "regression" / "hparams.json").read_text()) == expected["config"]


def test_an_object_in_log_with_writes_where_it_was_told_and_skips_what_a_cell_cannot_hold(tmp_path: Path) -> None:
    tracker = CSVTracker("object-run", logging_dir=tmp_path / "elsewhere")
    accelerator = Accelerator(log_with=[tracker], cpu=True)
    accelerator.init_trackers("ignored-for-objects", config={"seed": 3})
    accelerator.log({"loss": torch.tensor(0.5), "note": "warmup"})
    with pytest.warns(UserWarning, match=r"csv tracker: 'weights' \(Tensor\) was not logged"):
        accelerator.log({"loss": 0.25, "weights": torch.ones(3)})
    accelerator.log({"loss": 0.125, "weights": torch.ones(3)})  # warned once only
    path = accelerator.get_tracker("csv", unwrap=True)
    accelerator.end_training()

    assert path == tmp_path / "elsewhere" / "object-run" / "metrics.csv"
    assert [(row["step"], row["loss"], row["note"]) for row in read_rows(path)] == [
        ("0", "0.5", "warmup"), ("1", "0.25", ""), ("2", "0.125", "")]


def test_without_a_folder_or_with_unknown_options_the_run_is_refused_by_name(tmp_path: Path) -> None:
    # strict_trackers: a tracker that cannot start is an error, not plait's warning that training goes on without it
    with pytest.raises(Exception, match=r"the csv tracker writes files and needs a folder.*project_dir="):
        Accelerator(log_with="csv", cpu=True, strict_trackers=True).init_trackers("run")
    accelerator = Accelerator(log_with="csv", project_dir=str(tmp_path), cpu=True, strict_trackers=True)
    with pytest.raises(Exception, match=r"init_kwargs \{'csv': \{'folder': \.\.\.\}\}: it accepts only 'logging_dir'"):
        accelerator.init_trackers("run", init_kwargs={"csv": {"folder": "x"}})
