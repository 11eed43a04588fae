"""A third party's tracker: its own distribution with an entry point in ``plait.trackers``, built and
pip-installed here, written from ``plait.hookspecs`` alone."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from trackers_readers import read_tensorboard
from trackers_workers import CONFIG, fit

import plait
from plait import Accelerator

PYPROJECT = """
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "plait-jsonl"
version = "1.2.0"
description = "A tracker writing one JSON line per call."
requires-python = ">=3.10"

[project.entry-points."plait.trackers"]
jsonl = "plait_jsonl:JsonLines"
"""

MODULE = '''
"""Tracker ``jsonl``: every hook call as one JSON line in ``<logging_dir>/<project_name>.jsonl``."""

import json
import os

from plait import hookimpl


class JsonLines:
    def __init__(self):
        self.path = None

    def _write(self, **event):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\\n")

    @hookimpl
    def plait_tracker_start(self, accelerator, project_name, config, init_kwargs):
        self.path = os.path.join(accelerator.logging_dir, project_name + ".jsonl")
        self._write(hook="start", project=project_name, config=config, options=init_kwargs.get("jsonl", {}))

    @hookimpl
    def plait_tracker_log(self, values, step, log_kwargs):
        scalars = {k: float(v) for k, v in values.items()}
        self._write(hook="log", step=step, values=scalars, options=log_kwargs.get("jsonl", {}))

    @hookimpl
    def plait_tracker_finish(self):
        self._write(hook="finish")

    @hookimpl
    def plait_tracker_get(self, name, unwrap):
        if name != "jsonl":
            return None
        return self.path if unwrap else self
'''


@pytest.fixture(scope="module")
def jsonl_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plait-jsonl, built from its sources and pip-installed into a directory of its own."""
    root = tmp_path_factory.mktemp("plait-jsonl")
    source, site = root / "source", root / "site"
    (source / "src" / "plait_jsonl").mkdir(parents=True)
    (source / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (source / "src" / "plait_jsonl" / "__init__.py").write_text(textwrap.dedent(MODULE))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(site), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return site


@pytest.fixture
def jsonl_installed(jsonl_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.syspath_prepend(str(jsonl_site))  # also invalidates importlib's caches
    yield jsonl_site
    sys.modules.pop("plait_jsonl", None)
    sys.path_importer_cache.pop(str(jsonl_site), None)
    importlib.invalidate_caches()


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_it_is_listed_with_its_distribution_and_hooks(jsonl_installed: Path) -> None:
    [info] = [info for info in plait.list_plugins() if info.name == "jsonl"]
    assert (info.group, info.distribution, info.version, info.status) == ("plait.trackers", "plait-jsonl", "1.2.0", "ok")
    assert info.hooks == ["plait_tracker_finish", "plait_tracker_get", "plait_tracker_log", "plait_tracker_start"]


def test_found_by_name_it_receives_every_call_beside_a_first_party_tracker(
    jsonl_installed: Path, tmp_path: Path
) -> None:
    accelerator = Accelerator(log_with=["jsonl", "tensorboard"], project_dir=tmp_path)
    accelerator.init_trackers("regression", config=CONFIG, init_kwargs={"jsonl": {"flush": True}})
    losses = fit(accelerator, epochs=1)
    accelerator.log({"final": losses[-1]}, log_kwargs={"jsonl": {"tag": "end"}})
    assert accelerator.get_tracker("jsonl", unwrap=True) == str(tmp_path / "regression.jsonl")
    assert type(accelerator.get_tracker("jsonl")).__module__ == "plait_jsonl"
    accelerator.end_training()

    events = read_events(tmp_path / "regression.jsonl")
    assert events[0] == {"hook": "start", "project": "regression", "config": CONFIG, "options": {"flush": True}}
    logs = events[1:-1]
    assert [event["step"] for event in logs] == [*range(len(losses)), None]
    assert [event["values"]["loss"] for event in logs[:-1]] == pytest.approx(losses, rel=1e-6)
    assert logs[-1] == {"hook": "log", "step": None, "values": {"final": losses[-1]}, "options": {"tag": "end"}}
    assert events[-1] == {"hook": "finish"}
    assert [value for _, value in read_tensorboard(tmp_path / "regression").scalars["loss"]] == pytest.approx(
        losses, rel=1e-6
    )


def test_all_includes_it(jsonl_installed: Path, tmp_path: Path) -> None:
    accelerator = Accelerator(log_with="all", project_dir=tmp_path)
    assert accelerator.plugin_manager.has_plugin("plait.trackers:jsonl")
