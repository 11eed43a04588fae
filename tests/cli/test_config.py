"""``plait config``: the questionnaire driven through stdin, ``default``, ``show``, ``import``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import SCRIPTS, plait, read_report

from plait.plugins import installed_backends, installed_trackers


def trackers_answer() -> str:
    """The tracker question is asked only when some tracker is installed."""
    return "none\n" if installed_trackers() else ""


def written(path: Path) -> dict:  # type: ignore[type-arg]
    return yaml.safe_load(path.read_text())


def test_the_questionnaire_offers_installed_backends_re_asks_bad_answers_and_writes_a_valid_file(tmp_path):
    path = tmp_path / "plait.yaml"
    answers = (
        "ddp\n"  # backend
        "0\n2\n"  # machines: 0 is refused and asked again
        "1\n10.1.2.3\n1234\n"  # this machine's rank, machine 0's address and port
        "4\n"  # processes in all
        "fp8\nbf16\n"  # mixed precision: fp8 is not a choice
        "2\n"  # accumulation
        + trackers_answer()
        + "n\nfp16\n"  # ddp: find_unused_parameters, comm_hook
    )

    result = plait("config", "--config-file", str(path), input=answers)

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Which backend? ({', '.join(installed_backends())})" in result.stdout
    assert "is not in the range x>=1" in result.stdout + result.stderr
    assert "'fp8' is not one of 'no', 'fp16', 'bf16'" in result.stdout + result.stderr
    config = written(path)
    assert {k: config[k] for k in ("backend", "num_machines", "machine_rank", "main_process_ip", "main_process_port",
                                   "num_processes", "mixed_precision", "gradient_accumulation_steps")} == {
        "backend": "ddp", "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.1.2.3",
        "main_process_port": 1234, "num_processes": 4, "mixed_precision": "bf16", "gradient_accumulation_steps": 2,
    }
    assert config["ddp"] == {"comm_hook": "fp16"}
    assert f"plait config written to {path}" in result.stdout


def test_an_installed_backend_plugin_asks_its_own_questions(tmp_path, plugin_site, default_config):
    answers = "toy\n1\n2\nno\n1\n" + trackers_answer() + "2.5\nfancy\n"

    result = plait("config", input=answers, site=plugin_site)  # no --config-file: the default path

    assert result.returncode == 0, result.stdout + result.stderr
    offered = result.stdout.split("Which backend? (")[1].split(")")[0].split(", ")
    assert offered[:2] == ["single", "ddp"] and "toy" in offered
    assert "broken" not in offered  # installed, but it fails to load
    assert "Scale every loss by?" in result.stdout
    config = written(default_config)
    assert config["backend"] == "toy"
    assert config["toy"] == {"loss_scale": 2.5, "label": "fancy"}


def test_an_interrupted_questionnaire_leaves_the_old_file_alone(tmp_path):
    path = tmp_path / "plait.yaml"
    path.write_text("backend: single\n")

    result = plait("config", "--config-file", str(path), input="ddp\n1\n")  # stdin ends mid-way

    assert result.returncode != 0
    assert path.read_text() == "backend: single\n"


def test_config_default_is_sensible_for_this_cpu_machine_and_never_overwrites_without_force(default_config):
    result = plait("config", "default")

    assert result.returncode == 0, result.stderr
    config = written(default_config)
    assert (config["backend"], config["num_processes"], config["cpu"]) == ("single", 1, True)

    default_config.write_text("backend: ddp\nnum_processes: 8\n")
    result = plait("config", "default", "--mixed-precision", "bf16")
    assert result.returncode == 1
    assert f"{default_config} already exists and was left as it is: pass --force" in result.stderr
    assert default_config.read_text() == "backend: ddp\nnum_processes: 8\n"

    assert plait("config", "default", "--mixed-precision", "bf16", "--force").returncode == 0
    assert written(default_config)["mixed_precision"] == "bf16"


def test_config_show_prints_the_resolved_file_and_names_what_is_wrong(tmp_path, default_config):
    result = plait("config", "show")
    assert result.returncode == 1
    assert f"no config file at {default_config}: write one with `plait config`" in result.stderr

    path = tmp_path / "c.yaml"
    path.write_text("backend: ddp\nnum_processes: 2\n")
    result = plait("config", "show", "--config-file", str(path))
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert (shown["backend"], shown["num_processes"], shown["mixed_precision"]) == ("ddp", 2, "no")

    path.write_text("backend: ddp\nddp:\n  bucket_cap_mb: 25\n  comm_hok: fp16\n")
    result = plait("config", "--config-file", str(path), "show")  # the group's --config-file works too
    assert result.returncode == 1
    assert "unknown ddp option 'comm_hok' (did you mean 'comm_hook'?)" in result.stderr

    path.write_text("backend: ddp\nnum_processes: [2\n")
    result = plait("config", "show", "--config-file", str(path))
    assert result.returncode == 1
    assert f"config file {path}, line 3: malformed YAML" in " ".join(result.stderr.split())


def test_config_import_converts_accelerates_default_file_and_launch_uses_the_result(tmp_path, default_config):
    accelerate_file = Path(os.environ["HF_HOME"]) / "accelerate" / "default_config.yaml"
    accelerate_file.parent.mkdir(parents=True)
    accelerate_file.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\ndowncast_bf16: 'no'\n"
        "machine_rank: 0\nmain_training_function: main\nmixed_precision: 'no'\nnum_machines: 1\n"
        "num_processes: 2\nrdzv_backend: static\nsame_network: true\nuse_cpu: true\n"
    )

    result = plait("config", "import")

    assert result.returncode == 0, result.stderr
    config = written(default_config)
    assert (config["backend"], config["num_processes"], config["cpu"]) == ("ddp", 2, True)
    assert f"(from {accelerate_file})" in result.stdout

    out = tmp_path / "report.json"
    launched = plait("launch", str(SCRIPTS / "train.py"), str(out), "--steps", "2")  # no flags: the imported file
    assert launched.returncode == 0, launched.stderr[-4000:]
    assert (read_report(out)["world_size"], read_report(out)["backend"]) == (2, "ddp")


def test_config_import_of_a_backend_not_installed_warns_and_refuses_bad_sources(tmp_path):
    source = tmp_path / "tpu.yaml"
    source.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: XLA\nnum_processes: 8\n")
    target = tmp_path / "plait.yaml"

    result = plait("config", "import", str(source), "--config-file", str(target))

    assert result.returncode == 0, result.stderr
    assert "warning: backend 'xla' is not installed: pip install plait[xla]" in result.stderr
    assert written(target)["backend"] == "xla"

    result = plait("config", "import", str(source), "--config-file", str(target))
    assert result.returncode == 1 and "already exists" in result.stderr

    ours = tmp_path / "ours.yaml"
    ours.write_text("backend: ddp\n")
    result = plait("config", "import", str(ours), "--config-file", str(tmp_path / "x.yaml"))
    assert result.returncode == 1 and "is not an HF Accelerate config" in result.stderr

    result = plait("config", "import", str(tmp_path / "nowhere.yaml"))
    assert result.returncode == 1 and "no HF Accelerate config at" in result.stderr
