"""HF Accelerate's tracker API over the three plugins, and what a user sees when something is wrong."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
from trackers_readers import read_comet_archives, read_tensorboard, read_wandb_runs
from trackers_workers import CONFIG, fit

import plait
from plait import Accelerator, PluginError
from plait.plugins import discovery


def test_two_trackers_by_name_each_get_the_run_and_unwrap_to_their_native_objects(tmp_path: Path) -> None:
    from plait_trackers import CometMLTracker, WandBTracker

    accelerator = Accelerator(log_with=["wandb", "comet_ml"], project_dir=tmp_path)
    accelerator.init_trackers("pair", config=CONFIG)
    losses = fit(accelerator, epochs=1)
    assert isinstance(accelerator.get_tracker("wandb"), WandBTracker)
    assert isinstance(accelerator.get_tracker("comet_ml"), CometMLTracker)
    assert type(accelerator.get_tracker("wandb", unwrap=True)).__name__ == "Run"
    assert type(accelerator.get_tracker("comet_ml", unwrap=True)).__name__ == "OfflineExperiment"
    with pytest.raises(ValueError, match=r"no tracker named 'tensorboard': this accelerator logs with \['wandb', 'comet_ml'\]"):
        accelerator.get_tracker("tensorboard")
    accelerator.end_training()

    [run] = read_wandb_runs(tmp_path / "pair")
    [archive] = read_comet_archives(tmp_path / "pair")
    assert [row["loss"] for row in run.history] == pytest.approx(losses, rel=1e-6)
    assert [value for _, value in archive.metrics["loss"]] == pytest.approx(losses, rel=1e-6)
    assert run.config == CONFIG


def test_all_means_every_installed_tracker(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="all", project_dir=tmp_path)
    loaded = sorted(name for name, _ in accelerator.plugin_manager.list_name_plugin() if name.startswith("plait.trackers:"))
    assert loaded == ["plait.trackers:comet_ml", "plait.trackers:tensorboard", "plait.trackers:wandb"]
    accelerator.init_trackers("everything")
    accelerator.log({"x": 1.0}, step=0)
    accelerator.end_training()
    assert read_tensorboard(tmp_path / "everything").scalars == {"x": [(0, 1.0)]}
    assert read_wandb_runs(tmp_path / "everything")[0].history[0]["x"] == 1.0
    assert read_comet_archives(tmp_path / "everything")[0].metrics["x"] == [(0, 1.0)]


def test_a_library_that_is_missing_names_the_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now fails, as when it is not installed
    with pytest.raises(
        PluginError,
        match=r"tracker 'wandb' is installed but cannot run: the wandb tracker needs the 'wandb' library, "
        r"which is not installed: pip install plait\[wandb\]",
    ):
        Accelerator(log_with=["tensorboard", "wandb"])
    [info] = [info for info in plait.list_plugins() if info.name == "wandb"]
    # Listed as needing its library, not as broken: only a run that names it gets the error.
    assert info.status == "needs `pip install plait[wandb]`" and info.error is None
    # "all" is every tracker that can run here, as in HF Accelerate
    accelerator = Accelerator(log_with="all")
    assert sorted(accelerator.trackers.names) == ["comet_ml", "tensorboard"]


def test_an_unknown_tracker_lists_the_installed_ones_and_the_extras_that_add_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    every = discovery.entry_points

    def without_comet(group: str) -> list:
        return [ep for ep in every(group) if (group, ep.name) != (discovery.TRACKERS_GROUP, "comet_ml")]

    monkeypatch.setattr(discovery, "entry_points", without_comet)  # as if installed without [comet]
    with pytest.raises(PluginError) as caught:
        Accelerator(log_with="tensorbord")
    message = str(caught.value)
    assert "unknown tracker 'tensorbord' (did you mean 'tensorboard'?)" in message
    assert "installed trackers are tensorboard, wandb" in message
    assert "comet_ml (pip install plait[comet])" in message
    with pytest.raises(PluginError, match=r"tracker 'comet_ml' is not installed: pip install plait\[comet\]"):
        Accelerator(log_with="comet_ml")


def test_a_tracker_that_fails_while_logging_warns_once_and_training_and_other_trackers_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.utils.tensorboard.writer import FileWriter

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    accelerator = Accelerator(log_with=["tensorboard", "wandb"], project_dir=tmp_path)
    accelerator.init_trackers("failing")
    monkeypatch.setattr(FileWriter, "add_summary", disk_full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = fit(accelerator)
    failures = [str(w.message) for w in caught if "failed in" in str(w.message)]
    assert failures == [
        "tracker 'plait.trackers:tensorboard' failed in plait_tracker_log (OSError: No space left on device); "
        "training continues and later failures of this tracker are not reported "
        "(Accelerator(strict_trackers=True) raises instead)"
    ]
    # The warning points at the user's code, not into plait's (tests/core's hook recorder, when it runs in the
    # same session, wraps plait's fan-out: then it is the first frame outside plait).
    [where] = [w.filename for w in caught if "failed in" in str(w.message)]
    assert where in (fit.__code__.co_filename, str(Path(__file__).parents[1] / "core" / "conftest.py"))
    accelerator.end_training()
    assert [row["loss"] for row in read_wandb_runs(tmp_path / "failing")[0].history] == pytest.approx(losses, rel=1e-6)


def test_strict_trackers_raise_the_trackers_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.tensorboard.writer import FileWriter

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError("No space left on device")

    accelerator = Accelerator(log_with="tensorboard", project_dir=tmp_path, strict_trackers=True)
    accelerator.init_trackers("strict")
    monkeypatch.setattr(FileWriter, "add_summary", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        accelerator.log({"loss": 1.0}, step=0)
    accelerator.end_training()


def test_logging_before_init_trackers_says_so(tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="tensorboard", project_dir=tmp_path)
    with pytest.raises(RuntimeError, match=r"log\(\) was called before accelerator.init_trackers\(\)"):
        accelerator.log({"loss": 1.0})
    with pytest.raises(RuntimeError, match=r"has no run to unwrap: its run is not started \(call accelerator.init_trackers"):
        accelerator.get_tracker("tensorboard", unwrap=True)
    assert not (tmp_path / "tensorboard").exists()


def test_tracker_objects_of_each_kind_as_in_hf_accelerate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plait_trackers import CometMLTracker, TensorBoardTracker, WandBTracker

    monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", str(tmp_path / "comet"))
    trackers = [
        TensorBoardTracker("objects", logging_dir=tmp_path),
        WandBTracker("objects", dir=str(tmp_path)),
        CometMLTracker("objects", online=False),
    ]
    accelerator = Accelerator(log_with=trackers)
    accelerator.init_trackers("objects", config={"seed": 1})
    accelerator.log({"x": 5.0}, step=1)
    accelerator.end_training()
    assert read_tensorboard(tmp_path / "objects").scalars == {"x": [(1, 5.0)]}
    [run] = read_wandb_runs(tmp_path)
    assert (run.config, run.history[0]["x"]) == ({"seed": 1}, 5.0)
    [archive] = read_comet_archives(tmp_path / "comet")
    assert (archive.parameters, archive.metrics["x"]) == ({"seed": 1}, [(1, 5.0)])
