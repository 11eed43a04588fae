"""The zero backend through the real `plait` command: a checked run, its launch flags, a refused combination."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

PLAIT = str(Path(sys.executable).with_name("plait"))


def _plait(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "SLURM_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return subprocess.run([PLAIT, *args], env=env, capture_output=True, text=True, timeout=600)


def test_plait_test_passes_with_zero_on_two_processes_with_accumulation(tmp_path):
    result = _plait(tmp_path, "test", "--backend", "zero", "--num-processes", "2", "--gradient-accumulation-steps", "2")

    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "backend zero" in result.stdout and "PASS: 2 process(es)" in result.stdout


def test_zero_launch_flags_reach_the_workers_and_bad_combinations_are_refused_first(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import sys\nfrom plait import Accelerator\n"
        "a = Accelerator()\n"
        "if a.is_main_process:\n"
        "    o = a.backend_options\n"
        "    open(sys.argv[1], 'w').write(repr((a.backend, o.stage, o.gradient_clipping)))\n"
    )
    out = tmp_path / "out.txt"
    result = _plait(tmp_path, "launch", "--num-processes", "2", "--backend", "zero", "--zero-stage", "3",
                    "--zero-gradient-clipping", "0.5", str(script), str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    assert out.read_text() == "('zero', 3, 0.5)"

    result = _plait(tmp_path, "launch", "--num-processes", "2", "--backend", "zero", "--zero-stage", "2",
                    "--zero-offload-param-device", "cpu", str(script), str(out))
    assert result.returncode == 2
    assert "nothing was started" in result.stderr and "stage" in result.stderr


def test_accelerates_deepspeed_flags_reach_the_workers_options(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import sys\nfrom plait import Accelerator\n"
        "a = Accelerator()\n"
        "if a.is_main_process:\n"
        "    o = a.backend_options\n"
        "    open(sys.argv[1], 'w').write(repr((a.backend, a.num_processes, a.gradient_accumulation_steps, o.stage, "
        "o.gradient_clipping, o.offload_optimizer_device, o.zero3_init, o.save_16bit_model)))\n"
    )
    out = tmp_path / "out.txt"
    result = _plait(tmp_path, "launch", "--use_deepspeed", "--num_processes", "2", "--zero_stage", "3",
                    "--gradient_clipping", "1.0", "--offload_optimizer_device", "cpu", "--gradient_accumulation_steps",
                    "2", "--zero3_init_flag", "false", "--zero3_save_16bit_model", "true", str(script), str(out))

    assert result.returncode == 0, result.stderr[-4000:]
    assert out.read_text() == "('zero', 2, 2, 3, 1.0, 'cpu', False, True)"


def _launch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *flags: str) -> tuple[int, str, Any]:
    """Parse ``plait launch FLAGS script out`` for real, in this process; the launch itself only records the plan."""
    import plait_cli.launch as launch_module
    from plait.testing import isolate_environment
    from plait_cli.cli_state import CliState
    from plait_cli.main import build_cli

    isolate_environment(monkeypatch, tmp_path / "config")
    plans: list[Any] = []
    monkeypatch.setattr(launch_module, "execute", lambda plan, pm: plans.append(plan) or 0)
    result = CliRunner().invoke(build_cli(CliState.load()), ["launch", "--num_processes", "2", *flags, __file__, "out"])
    return result.exit_code, " ".join(result.output.split()), plans[0] if plans else None


def test_each_accelerate_deepspeed_flag_sets_what_its_deepspeed_config_key_does(monkeypatch, tmp_path):
    from plait.config.accelerate_files import from_accelerate

    ds_json = tmp_path / "ds.json"
    ds_json.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto"}))
    code, message, plan = _launch(
        monkeypatch, tmp_path, "--use_deepspeed", "--zero_stage", "3", "--offload_optimizer_device", "nvme",
        "--offload_optimizer_nvme_path", "/nvme/o", "--offload_param_device", "cpu", "--offload_param_nvme_path",
        "/nvme/p", "--gradient_clipping", "1.5", "--zero3_init_flag", "true", "--zero3-save-16bit-model", "false",
        "--deepspeed_config_file", str(ds_json), "--gradient_accumulation_steps", "4",
    )

    assert code == 0, message
    expected = from_accelerate({"distributed_type": "DEEPSPEED", "deepspeed_config": {
        "zero_stage": 3, "offload_optimizer_device": "nvme", "offload_optimizer_nvme_path": "/nvme/o",
        "offload_param_device": "cpu", "offload_param_nvme_path": "/nvme/p", "gradient_clipping": 1.5,
        "zero3_init_flag": True, "zero3_save_16bit_model": False, "deepspeed_config_file": str(ds_json),
        "gradient_accumulation_steps": 4,
    }}, "test")
    assert (plan.config.backend, plan.config.gradient_accumulation_steps) == ("zero", expected["gradient_accumulation_steps"])
    assert dict(plan.config.section("zero")) == expected["zero"]


def test_accelerate_deepspeed_flags_that_contradict_are_refused(monkeypatch, tmp_path):
    code, message, _ = _launch(monkeypatch, tmp_path, "--use_deepspeed", "--zero3-init", "--zero3_init_flag", "false")
    assert code == 2 and "--zero3-init and --zero3_init_flag both set zero option zero3_init" in message

    code, message, _ = _launch(monkeypatch, tmp_path, "--multi_gpu", "--zero_stage", "3")
    assert code == 2
    assert "--zero-stage sets options of the zero backend, but backend ddp runs (--multi_gpu)" in message
    assert "--use_deepspeed" in message

    code, message, _ = _launch(monkeypatch, tmp_path, "--use_deepspeed", "--deepspeed_hostfile", "hosts")
    assert code == 2 and "--deepspeed_hostfile is not supported" in message
