"""TensorBoard: event files read back with tensorboard's own EventAccumulator."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image as PILImage
from trackers_readers import read_tensorboard
from trackers_workers import CONFIG, fit

from plait import Accelerator
from plait.tracking import Histogram, Image


def test_every_scalar_is_at_its_step_and_the_config_is_the_runs_hparams(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="tensorboard", project_dir=tmp_path)
    accelerator.init_trackers("regression", config=CONFIG)
    losses = fit(accelerator)
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    accelerator.end_training()

    run = read_tensorboard(tmp_path / "regression")
    assert Path(writer.log_dir) == tmp_path / "regression"
    assert len(run.event_files) == 1
    assert [step for step, _ in run.scalars["loss"]] == list(range(len(losses)))
    assert [value for _, value in run.scalars["loss"]] == pytest.approx(losses, rel=1e-6)
    assert run.scalars["lr"] == [(step, pytest.approx(0.1)) for step in range(len(losses))]
    assert [value for _, value in run.scalars["epoch"]] == [0.0] * 6 + [1.0] * 6
    assert run.hparams == {"lr": 0.1, "batch_size": 4, "optimizer/name": "sgd", "optimizer/momentum": 0.0, "amp": False}
    assert run.session_ended


def test_strings_dicts_images_and_histograms_are_stored_and_other_values_skipped_with_one_warning(
    tmp_path: Path,
) -> None:
    accelerator = Accelerator(log_with="tensorboard", project_dir=tmp_path)
    accelerator.init_trackers("kinds")
    weights = torch.randn(4, 5)
    values = {
        "note": "warming up",
        "loss_by_split": {"train": 0.5, "eval": torch.tensor(0.75)},
        "weights": weights,
        "bias": Histogram([0.1, 0.2, 0.2]),
        "sample": Image(torch.rand(3, 8, 6), caption="a sample"),
        "photo": PILImage.new("RGB", (5, 7), color=(255, 0, 0)),
        "gallery": [Image(torch.rand(1, 4, 4)), Image(torch.rand(1, 4, 4))],
        "callback": print,
    }
    with pytest.warns(UserWarning, match=r"tensorboard tracker: 'callback' \(builtin_function_or_method\) was not logged"):
        accelerator.log(values, step=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same kind again: no second warning
        accelerator.log({"callback": len, "loss": 1.5}, step=3)
    accelerator.end_training()

    run = read_tensorboard(tmp_path / "kinds")
    assert run.texts == {"note": [(2, "warming up")]}
    assert run.histograms == {"weights": [(2, 20)], "bias": [(2, 3)]}
    assert run.images["sample"] == [(2, 6, 8)]
    assert run.images["photo"] == [(2, 5, 7)]
    assert [step for step, _, _ in run.images["gallery"]] == [2]  # one grid of both
    assert run.scalars == {"loss": [(3, 1.5)]}
    # add_scalars: one sub-run per key, each with the dict's name as its tag
    assert read_tensorboard(tmp_path / "kinds" / "loss_by_split_train").scalars == {"loss_by_split": [(2, 0.5)]}
    assert read_tensorboard(tmp_path / "kinds" / "loss_by_split_eval").scalars == {"loss_by_split": [(2, 0.75)]}


def test_without_a_step_the_tracker_counts_on_from_the_last_one(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="tensorboard", project_dir=tmp_path)
    accelerator.init_trackers("steps")
    for value in (1.0, 2.0, 3.0):
        accelerator.log({"x": value})
    accelerator.log({"x": 10.0}, step=10)
    accelerator.log({"x": 11.0})
    accelerator.end_training()
    assert read_tensorboard(tmp_path / "steps").scalars["x"] == [(0, 1.0), (1, 2.0), (2, 3.0), (10, 10.0), (11, 11.0)]


def test_init_kwargs_go_to_the_summary_writer(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="tensorboard", project_dir=tmp_path / "unused")
    accelerator.init_trackers(
        "elsewhere", init_kwargs={"tensorboard": {"log_dir": str(tmp_path / "chosen"), "filename_suffix": ".mine"}}
    )
    accelerator.log({"x": 1.0}, step=0)
    accelerator.end_training()
    assert [path.name.endswith(".mine") for path in (tmp_path / "chosen").iterdir()] == [True]
    assert read_tensorboard(tmp_path / "chosen").scalars == {"x": [(0, 1.0)]}


def test_without_a_logging_directory_starting_fails_and_says_what_to_pass() -> None:
    accelerator = Accelerator(log_with="tensorboard", strict_trackers=True)
    with pytest.raises(ValueError, match=r"has none: pass Accelerator\(project_dir=\.\.\.\)"):
        accelerator.init_trackers("nowhere")

    accelerator = Accelerator(log_with="tensorboard")
    with pytest.warns(UserWarning, match="failed in plait_tracker_start") as caught:
        accelerator.init_trackers("nowhere")
    # The warning points at the user's line (or, when tests/core runs in the same session, at its hook
    # recorder, which wraps plait's fan-out: the first frame outside plait either way).
    assert caught[0].filename in (__file__, str(Path(__file__).parents[1] / "core" / "conftest.py"))
    with pytest.warns(UserWarning, match=r"cannot log: starting its run failed \(ValueError"):
        accelerator.log({"x": 1.0})
    with pytest.raises(RuntimeError, match="has no run to unwrap: starting its run failed"):
        accelerator.get_tracker("tensorboard", unwrap=True)
    accelerator.end_training()


def test_a_tracker_object_as_in_hf_accelerate(tmp_path: Path) -> None:
    from plait_trackers import TensorBoardTracker

    tracker = TensorBoardTracker("object-run", logging_dir=tmp_path)
    accelerator = Accelerator(log_with=[tracker])
    accelerator.init_trackers("ignored-by-objects", config={"seed": 3})
    accelerator.log({"x": 2.0}, step=4)
    assert accelerator.get_tracker("tensorboard") is tracker
    assert accelerator.get_tracker("tensorboard", unwrap=True) is tracker.writer
    accelerator.end_training()
    run = read_tensorboard(tmp_path / "object-run")
    assert run.scalars == {"x": [(4, 2.0)]}
    assert run.hparams == {"seed": 3}


def test_numbers_of_every_type_are_scalars_and_log_images_works_as_in_hf_accelerate(tmp_path: Path) -> None:
    import numpy as np

    accelerator = Accelerator(log_with="tensorboard", project_dir=tmp_path)
    accelerator.init_trackers("numbers")
    accelerator.log(
        {
            "python_int": 3,
            "python_bool": True,
            "numpy_float": np.float32(0.25),
            "numpy_bool": np.bool_(False),
            "one_element": torch.tensor([2.5]),
            "bf16": torch.tensor(1.5, dtype=torch.bfloat16),
        },
        step=1,
    )
    with pytest.warns(UserWarning, match=r"'phase' \(complex\) was not logged"):
        accelerator.log({"phase": 1j}, step=1)
    tracker = accelerator.get_tracker("tensorboard")
    tracker.log_images({"batch": np.random.rand(2, 4, 5, 3), "single": np.zeros((4, 5), dtype=np.uint8)}, step=1)
    with pytest.warns(UserWarning, match=r"'wrong' \(plait.tracking.Image\) was not logged: ValueError: an image has shape"):
        accelerator.log({"wrong": Image(torch.rand(2, 3, 4, 5))}, step=1)
    accelerator.end_training()

    run = read_tensorboard(tmp_path / "numbers")
    assert run.scalars == {
        "python_int": [(1, 3.0)],
        "python_bool": [(1, 1.0)],
        "numpy_float": [(1, 0.25)],
        "numpy_bool": [(1, 0.0)],
        "one_element": [(1, 2.5)],
        "bf16": [(1, 1.5)],
    }
    assert run.images == {"batch": [(1, 2 * 5, 4)], "single": [(1, 5, 4)]}  # add_images: one row of both
