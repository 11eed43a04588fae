"""Listing plugins and building an Accelerator import no tracker library: each is imported when its run starts."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "tensorboard", "wandb", "comet_ml", "PIL")


def run_python(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_listing_plugins_imports_none_of_the_trackers_libraries() -> None:
    seen = run_python(
        "import json, sys, plait\n"
        "infos = plait.list_plugins()\n"
        "trackers = {i.name: [i.status, i.hooks] for i in infos if i.group == 'plait.trackers'}\n"
        f"print(json.dumps({{'trackers': trackers, 'imported': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    hooks = ["plait_env_report", "plait_tracker_finish", "plait_tracker_get", "plait_tracker_log", "plait_tracker_start"]
    assert seen["trackers"] == {name: ["ok", hooks] for name in ("comet_ml", "tensorboard", "wandb")}
    assert seen["imported"] == []


def test_a_library_is_imported_only_when_its_run_starts(tmp_path) -> None:
    seen = run_python(
        "import json, sys\n"
        "from plait import Accelerator\n"
        f"accelerator = Accelerator(log_with='all', project_dir={str(tmp_path)!r})\n"
        "print(json.dumps({'imported': [m for m in ('tensorboard', 'wandb', 'comet_ml') if m in sys.modules]}))"
    )
    assert seen["imported"] == []


def test_each_tracker_reports_its_library_version_for_plait_env() -> None:
    from importlib import metadata

    from plait.plugins import TRACKERS_GROUP, entry_points

    for ep in entry_points(TRACKERS_GROUP):
        tracker = ep.load()()
        assert tracker.plait_env_report() == [(f"{ep.name} tracker ({tracker.library})", metadata.version(tracker.library))]
