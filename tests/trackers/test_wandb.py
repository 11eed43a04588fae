"""Weights & Biases, offline: the run's config and history read back from its ``.wandb`` file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trackers_readers import read_wandb_runs
from trackers_workers import CONFIG, fit

from plait import Accelerator
from plait.tracking import Histogram, Image


def test_the_offline_run_holds_the_config_and_every_logged_value(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="wandb", project_dir=tmp_path)
    accelerator.init_trackers("regression", config=CONFIG, init_kwargs={"wandb": {"name": "first", "tags": ["smoke"]}})
    losses = fit(accelerator)
    run = accelerator.get_tracker("wandb", unwrap=True)
    assert (run.name, list(run.tags)) == ("first", ["smoke"])
    accelerator.end_training()

    [written] = read_wandb_runs(tmp_path / "regression")
    assert written.run_id == run.id
    assert written.project == "regression"
    assert written.finished
    assert written.config == CONFIG
    assert [row["_step"] for row in written.history] == list(range(len(losses)))
    assert [row["loss"] for row in written.history] == pytest.approx(losses, rel=1e-6)
    assert [row["lr"] for row in written.history] == [0.1] * len(losses)
    assert [row["epoch"] for row in written.history] == [0] * 6 + [1] * 6


def test_strings_dicts_images_histograms_and_wandb_objects_are_stored(tmp_path: Path) -> None:
    import wandb

    accelerator = Accelerator(log_with="wandb", project_dir=tmp_path)
    accelerator.init_trackers("kinds")
    table = wandb.Table(columns=["a"], data=[[1], [2]])
    with pytest.warns(UserWarning, match=r"wandb tracker: 'callback' \(builtin_function_or_method\) was not logged"):
        accelerator.log(
            {
                "note": "warming up",
                "loss_by_split": {"train": 0.5, "eval": torch.tensor(0.75)},
                "weights": torch.arange(6.0),
                "bias": Histogram([1.0, 2.0]),
                "sample": Image(torch.rand(3, 8, 6), caption="a sample"),
                "table": table,
                "callback": print,
            },
            step=0,
        )
    accelerator.end_training()

    [written] = read_wandb_runs(tmp_path / "kinds")
    [row] = written.history
    assert row["note"] == "warming up"
    assert row["loss_by_split"] == {"train": 0.5, "eval": 0.75}
    assert row["weights"]["_type"] == "histogram" and sum(row["weights"]["values"]) == 6
    assert row["bias"]["_type"] == "histogram"
    assert (row["sample"]["_type"], row["sample"]["width"], row["sample"]["height"]) == ("image-file", 6, 8)
    assert row["sample"]["caption"] == "a sample"
    assert row["table"]["_type"] == "table-file"
    assert "callback" not in row
    assert (written.directory / "files" / row["sample"]["path"]).is_file()


def test_log_kwargs_reach_run_log(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="wandb", project_dir=tmp_path)
    accelerator.init_trackers("kwargs")
    accelerator.log({"a": 1.0}, step=0, log_kwargs={"wandb": {"commit": False}})
    accelerator.log({"b": 2.0}, step=0)  # same row: the first was not committed
    accelerator.log({"a": 3.0}, step=1)
    accelerator.end_training()
    [written] = read_wandb_runs(tmp_path / "kwargs")
    assert [{k: v for k, v in row.items() if not k.startswith("_")} for row in written.history] == [
        {"a": 1.0, "b": 2.0},
        {"a": 3.0},
    ]
