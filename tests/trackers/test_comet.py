"""Comet, offline: the archive it writes for a later upload, opened and read."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from trackers_readers import read_comet_archives
from trackers_workers import CONFIG, fit

from plait import Accelerator
from plait.tracking import Histogram, Image


def test_the_offline_archive_holds_the_parameters_and_every_metric_at_its_step(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="comet_ml", project_dir=tmp_path)
    accelerator.init_trackers("regression", config=CONFIG)
    losses = fit(accelerator)
    experiment = accelerator.get_tracker("comet_ml", unwrap=True)
    assert type(experiment).__name__ == "OfflineExperiment"
    accelerator.end_training()

    [archive] = read_comet_archives(tmp_path / "regression")
    assert archive.project_name == "regression"
    assert archive.parameters == {"lr": 0.1, "batch_size": 4, "optimizer|name": "sgd", "optimizer|momentum": 0.0,
                                  "amp": False}
    assert [step for step, _ in archive.metrics["loss"]] == list(range(len(losses)))
    assert [value for _, value in archive.metrics["loss"]] == pytest.approx(losses, rel=1e-6)
    assert archive.metrics["lr"] == [(step, 0.1) for step in range(len(losses))]


def test_strings_dicts_images_and_histograms_are_stored(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="comet_ml", project_dir=tmp_path)
    accelerator.init_trackers("kinds")
    with pytest.warns(UserWarning, match=r"comet_ml tracker: 'callback' \(builtin_function_or_method\) was not logged"):
        accelerator.log(
            {
                "note": "warming up",
                "loss_by_split": {"train": 0.5, "eval": torch.tensor(0.75)},
                "weights": torch.arange(6.0),
                "bias": Histogram([1.0, 2.0]),
                "sample": Image(torch.rand(3, 8, 6)),
                "callback": print,
            },
            step=2,
        )
    accelerator.end_training()

    [archive] = read_comet_archives(tmp_path / "kinds")
    assert archive.texts == [(2, "note", "warming up")]
    assert archive.metrics["loss_by_split_train"] == [(2, 0.5)]
    assert archive.metrics["loss_by_split_eval"] == [(2, 0.75)]
    assert ("histogram3d", "weights", 2) in archive.uploads
    assert ("histogram3d", "bias", 2) in archive.uploads
    assert ("visualization", "sample", 2) in archive.uploads
