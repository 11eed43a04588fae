"""A new user's first run: ``plait config default`` on a CPU machine, then ``plait launch`` and ``plait test``
on several processes; contradictions between a flag and the file refused before a process starts; plugins
whose library is missing kept quiet until a run names them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import SCRIPTS, plait, read_report
from test_launch import TRAIN, assert_same_params, reference

MARKER = str(SCRIPTS / "marker.py")


@pytest.fixture
def single_process_default(default_config: Path) -> Path:
    result = plait("config", "default")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(default_config.read_text())["backend"] == "single"  # one process on this CPU machine
    return default_config


def test_a_process_count_flag_beats_the_default_file_s_single_process_backend(single_process_default, tmp_path):
    out = tmp_path / "report.json"

    result = plait("launch", "--num-processes", "2", TRAIN, str(out), "--batch", "4")

    assert result.returncode == 0, result.stderr[-6000:]
    report = read_report(out)
    assert (report["world_size"], report["backend"]) == (2, "ddp")
    assert_same_params(report["params"], reference(world=2, batch=4, steps=10))


def test_plait_test_on_two_processes_after_plait_config_default(single_process_default):
    result = plait("test", "--num-processes", "2")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "plait test: 2 process(es), backend ddp" in result.stdout
    assert "PASS: 2 process(es)" in result.stdout


@pytest.mark.parametrize(
    ("flags", "file", "named"),
    [
        (["--backend", "single", "--num-processes", "2"], None, ["--backend single", "--num-processes 2"]),
        ([], "backend: single\nnum_processes: 2\n", ["config file", "line 1", "line 2"]),
        (["--backend", "single"], "num_processes: 2\n", ["--backend single", "line 1"]),
    ],
)
def test_a_contradiction_the_launcher_cannot_resolve_names_both_sources(flags, file, named, tmp_path,
                                                                        no_workers_started):
    extra = []
    if file is not None:
        config_file = tmp_path / "c.yaml"
        config_file.write_text(file)
        extra = ["--config-file", str(config_file)]
    result = plait("launch", *flags, *extra, MARKER, str(no_workers_started))

    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())
    assert "backend 'single'" in message and "runs one process" in message and "asks for 2" in message
    for source in named:
        assert source in message, message
    assert "nothing was started" in message


TRACKER_LIBRARIES = ("wandb", "comet_ml")


def test_trackers_whose_library_is_missing_are_silent_and_listed_as_needing_it():
    if importlib.util.find_spec("plait_trackers") is None:
        pytest.skip("needs plait-trackers installed without wandb and comet_ml (the cli nox session)")
    present = [name for name in TRACKER_LIBRARIES if importlib.util.find_spec(name) is not None]
    if present:
        pytest.skip(f"needs wandb and comet_ml absent; installed here: {', '.join(present)}")

    help_result = plait("--help")
    plugins = plait("plugins")
    env = plait("env")

    assert help_result.returncode == 0 and help_result.stderr == ""
    assert plugins.returncode == 0 and plugins.stderr == ""
    rows = {line.split()[0]: line for line in plugins.stdout.splitlines() if line.startswith("  ") and "hooks:" not in line}
    assert rows["wandb"].endswith("needs `pip install plait[wandb]`")
    assert rows["comet_ml"].endswith("needs `pip install plait[comet]`")
    assert "broken" not in plugins.stdout
    assert "- plugin wandb: needs `pip install plait[wandb]`" in env.stdout
