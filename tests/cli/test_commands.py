"""``plait --help``, ``plugins``, ``env``, ``test``, plugin-contributed commands, and what start-up imports."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import plait, plait_env

HEAVY = ("torch", "numpy", "safetensors", "deepspeed", "torch_xla", "wandb", "comet_ml", "tensorboard", "yaml")


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["plugins", "--json", "--all"], ["launch", "--help"]])
def test_help_and_plugins_import_no_heavy_library(args, plugin_site):
    probe = (
        "import sys\n"
        "from plait_cli.main import build_cli\n"
        f"build_cli().main(args={args!r}, prog_name='plait', standalone_mode=False)\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=plait_env(site=plugin_site), capture_output=True,
                            text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY="


def test_plugins_lists_every_plugin_with_distribution_version_hooks_and_status(plugin_site):
    result = plait("plugins", "--json", site=plugin_site)

    assert result.returncode == 0, result.stderr
    plugins = {(p["group"], p["name"]): p for p in json.loads(result.stdout)}
    assert ("plait.backends", "single") not in plugins  # built-in defaults only with --all
    toy = plugins[("plait.backends", "toy")]
    assert (toy["distribution"], toy["status"]) == ("plait-toy", "ok")
    assert "plait_launch_options" in toy["hooks"] and "plait_config_questions" in toy["hooks"]
    ddp = plugins[("plait.backends", "ddp")]
    assert (ddp["distribution"], ddp["version"]) == ("plait-ddp", metadata.version("plait-ddp"))
    assert plugins[("plait.plugins", "stamp")]["hooks"] == ["plait_cli_commands", "plait_env_report", "plait_wrap_model"]
    broken = plugins[("plait.plugins", "broken")]
    assert broken["status"].startswith("broken: ModuleNotFoundError")

    everything = json.loads(plait("plugins", "--json", "--all", site=plugin_site).stdout)
    single = next(p for p in everything if p["name"] == "single")
    assert (single["distribution"], single["status"]) == ("plait", "ok")

    text = plait("plugins", site=plugin_site, env={"PLAIT_DISABLE_PLUGINS": "stamp"}).stdout
    assert "backends (plait.backends):" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("  ") and "hooks:" not in line}
    assert rows["stamp"][1:] == ["plait-stamp", "1.2.3", "disabled"]
    assert rows["toy"][1:] == ["plait-toy", "0.4.0", "ok"]
    assert rows["broken"][3:5] == ["broken:", "ModuleNotFoundError:"]
    assert "hooks: backend_options, config_questions, launch, launch_options, precision" in text


def test_a_plugin_adds_a_command_and_a_broken_plugin_does_not_break_the_command_line(plugin_site):
    result = plait("stamp", "resnet50", site=plugin_site)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "plait_stamp=resnet50\n"
    assert "plugin 'broken' (plait-broken" in result.stderr  # one line saying so, and the command still ran
    assert "stamp" in plait("--help", site=plugin_site).stdout


def test_unknown_commands_suggest_the_closest_one():
    result = plait("lanch")
    assert result.returncode == 2
    assert "No such command 'lanch'. Did you mean 'launch'?" in result.stderr

    result = plait("config", "shwo")
    assert result.returncode == 2
    assert "Did you mean 'show'?" in result.stderr


def test_env_reports_versions_plugins_and_the_resolved_config(plugin_site, tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("backend: ddp\nnum_processes: 2\nmixed_precision: bf16\n")

    result = plait("env", "--config-file", str(config_file), site=plugin_site)

    assert result.returncode == 0, result.stderr
    lines = result.stdout
    assert f"- torch: {metadata.version('torch')}" in lines
    distributions = next(line for line in lines.splitlines() if line.startswith("- plait distributions: "))
    assert f"plait-cli {metadata.version('plait-cli')}" in distributions
    assert f"plait-ddp {metadata.version('plait-ddp')}" in distributions
    assert "- plait-ddp process-group backends: gloo" in lines  # a plugin's own line
    assert "- plait-stamp: stamping models of backend" in lines
    assert "- plugin broken: BROKEN: ModuleNotFoundError" in lines
    assert f"- config file: {config_file}" in lines
    assert "    mixed_precision: bf16" in lines and "    num_processes: 2" in lines

    config_file.write_text("num_processes: zero\n")
    result = plait("env", "--config-file", str(config_file))
    assert result.returncode == 0  # a broken config is reported, not a crash
    assert f"- config: INVALID: config file {config_file}, line 1: num_processes='zero' is not valid" in result.stdout


def test_plait_test_passes_on_two_processes_with_accumulation():
    result = plait("test", "--num-processes", "2", "--gradient-accumulation-steps", "2")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "plait test: 2 process(es), backend ddp, mixed precision no, 2 accumulation step(s)" in result.stdout
    assert "PASS: 2 process(es) on cpu after 6 steps" in result.stdout


def test_plait_test_fails_when_the_numbers_are_wrong(tmp_path):
    # bf16-compressed gradient all-reduce is a real, documented option that changes the numbers by ~1e-3.
    config_file = tmp_path / "lossy.yaml"
    config_file.write_text("backend: ddp\nnum_processes: 2\nddp:\n  comm_hook: bf16\n")

    result = plait("test", "--config-file", str(config_file))

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL: 2 process(es) on cpu after 6 steps: the parameters differ" in result.stderr
