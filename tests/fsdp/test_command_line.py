"""The fsdp backend through the real `plait` command: a checked run, and its launch flags reaching the workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

PLAIT = str(Path(sys.executable).with_name("plait"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "SLURM_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def test_plait_test_passes_with_fsdp_on_two_processes_with_accumulation(tmp_path):
    result = subprocess.run(
        [PLAIT, "test", "--backend", "fsdp", "--num-processes", "2", "--gradient-accumulation-steps", "2"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "backend fsdp" in result.stdout and "PASS: 2 process(es)" in result.stdout


def test_fsdp_launch_flags_reach_the_workers_options(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import sys\nfrom plait import Accelerator\n"
        "a = Accelerator()\n"
        "if a.is_main_process:\n"
        "    open(sys.argv[1], 'w').write(repr((a.backend, a.backend_options.reshard_after_forward, "
        "a.backend_options.min_num_params)))\n"
    )
    out = tmp_path / "out.txt"
    result = subprocess.run(
        [PLAIT, "launch", "--num-processes", "2", "--backend", "fsdp", "--fsdp-no-reshard-after-forward",
         "--fsdp-min-num-params", "1000", str(script), str(out)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    assert out.read_text() == "('fsdp', False, 1000)"

    result = subprocess.run(
        [PLAIT, "launch", "--num-processes", "2", "--backend", "fsdp", "--fsdp-min-num-params", "1000",
         "--fsdp-transformer-layer-cls-to-wrap", "Block", str(script), str(out)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2  # options that cannot go together, refused before any process starts
    assert "nothing was started" in result.stderr


def test_accelerates_fsdp_flags_reach_the_workers_options(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import sys\nfrom plait import Accelerator\n"
        "a = Accelerator()\n"
        "if a.is_main_process:\n"
        "    o = a.backend_options\n"
        "    open(sys.argv[1], 'w').write(repr((a.backend, a.num_processes, o.reshard_after_forward, o.wrap_policy, "
        "o.min_num_params, o.offload_params, o.state_dict_type, dict(o.ignored))))\n"
    )
    out = tmp_path / "out.txt"
    result = subprocess.run(
        [PLAIT, "launch", "--use_fsdp", "--num_processes", "2", "--fsdp_reshard_after_forward", "false",
         "--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP", "--fsdp_min_num_params", "10", "--fsdp_offload_params", "true",
         "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_version", "2", "--fsdp_use_orig_params", "true",
         str(script), str(out)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    assert out.read_text() == ("('fsdp', 2, False, 'SIZE_BASED_WRAP', 10, True, 'FULL_STATE_DICT', "
                               "{'version': 2, 'use_orig_params': True})")


def _launch(monkeypatch: pytest.MonkeyPatch, *flags: str, script_args: tuple[str, ...] = ("out",)) -> tuple[int, str, Any]:
    """Parse ``plait launch FLAGS script out`` for real, in this process; the launch itself only records the plan."""
    import plait_cli.launch as launch_module
    from plait_cli.cli_state import CliState
    from plait_cli.main import build_cli

    plans: list[Any] = []
    monkeypatch.setattr(launch_module, "execute", lambda plan, pm: plans.append(plan) or 0)
    result = CliRunner().invoke(build_cli(CliState.load()), ["launch", "--num_processes", "2", *flags, __file__, *script_args])
    return result.exit_code, " ".join(result.output.split()), plans[0] if plans else None


@pytest.mark.parametrize(
    ("flags", "fsdp_config"),
    [
        (["--fsdp_sharding_strategy", "SHARD_GRAD_OP"], {"fsdp_sharding_strategy": "SHARD_GRAD_OP"}),
        (["--fsdp_sharding_strategy", "hybrid_shard_zero2"], {"fsdp_sharding_strategy": "HYBRID_SHARD_ZERO2"}),
        (["--fsdp_sharding_strategy", "1"], {"fsdp_sharding_strategy": 1}),
        (["--fsdp_reshard_after_forward", "false"], {"fsdp_reshard_after_forward": False}),
        (["--fsdp_reshard_after_forward", "SHARD_GRAD_OP"], {"fsdp_reshard_after_forward": "SHARD_GRAD_OP"}),
        (["--fsdp_offload_params", "true", "--fsdp_activation_checkpointing", "true", "--fsdp_cpu_ram_efficient_loading",
          "true", "--fsdp_transformer_layer_cls_to_wrap", "Block,Attention"],
         {"fsdp_offload_params": True, "fsdp_activation_checkpointing": True, "fsdp_cpu_ram_efficient_loading": True,
          "fsdp_transformer_layer_cls_to_wrap": "Block,Attention"}),
        (["--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP", "--fsdp_min_num_params", "100", "--fsdp_state_dict_type",
          "FULL_STATE_DICT"],
         {"fsdp_auto_wrap_policy": "SIZE_BASED_WRAP", "fsdp_min_num_params": 100,
          "fsdp_state_dict_type": "FULL_STATE_DICT"}),
        (["--fsdp_version", "2", "--fsdp_use_orig_params", "true", "--fsdp_sync_module_states", "false",
          "--fsdp_forward_prefetch", "false", "--fsdp_backward_prefetch", "BACKWARD_PRE"],
         {"fsdp_version": 2, "fsdp_use_orig_params": True, "fsdp_sync_module_states": False,
          "fsdp_forward_prefetch": False, "fsdp_backward_prefetch": "BACKWARD_PRE"}),
        # Accelerate's dash spellings take a value too, where plait's same spelling is a switch.
        (["--fsdp-offload-params", "true"], {"fsdp_offload_params": True}),
        (["--fsdp-reshard-after-forward=SHARD_GRAD_OP"], {"fsdp_reshard_after_forward": "SHARD_GRAD_OP"}),
        (["--fsdp-cpu-ram-efficient-loading", "--fsdp-offload-params"],  # plait's switches, before the script
         {"fsdp_cpu_ram_efficient_loading": True, "fsdp_offload_params": True}),
    ],
)
def test_each_accelerate_fsdp_flag_sets_what_its_fsdp_config_key_does(monkeypatch, flags, fsdp_config):
    from plait.config.accelerate_files import from_accelerate

    code, message, plan = _launch(monkeypatch, "--use_fsdp", *flags)

    assert code == 0, message
    expected = from_accelerate({"distributed_type": "FSDP", "fsdp_config": fsdp_config}, "test")["fsdp"]
    assert dict(plan.config.section("fsdp")) == expected
    assert plan.config.backend == "fsdp"


def test_accelerate_fsdp_flags_that_contradict_or_are_not_valid_are_refused(monkeypatch):
    code, message, _ = _launch(monkeypatch, "--use_fsdp", "--fsdp-no-reshard-after-forward", "--fsdp_sharding_strategy",
                               "FULL_SHARD")
    assert code == 2
    assert ("--fsdp-no-reshard-after-forward and --fsdp_sharding_strategy both set fsdp option reshard_after_forward"
            in message)

    code, message, _ = _launch(monkeypatch, "--use_fsdp", "--fsdp_sharding_strategy", "HALF_SHARD")
    assert code == 2 and "'HALF_SHARD' is not valid: expected one of FULL_SHARD, SHARD_GRAD_OP" in message

    # ddp is installed in every session that has fsdp (zero is not).
    code, message, _ = _launch(monkeypatch, "--multi_gpu", "--num_processes", "2", "--fsdp_offload_params", "true")
    assert code == 2 and "--fsdp_offload_params sets options of the fsdp backend, but backend ddp runs" in message

    with pytest.warns(UserWarning, match="always runs FSDP2"):
        code, message, _ = _launch(monkeypatch, "--use_fsdp", "--fsdp_version", "1")
    assert code == 0, message


def test_the_scripts_own_arguments_are_never_read_as_accelerate_flags(monkeypatch):
    code, message, plan = _launch(monkeypatch, "--use_fsdp", "--fsdp-offload-params",
                                  script_args=("--fsdp-offload-params", "false"))

    assert code == 0, message
    assert dict(plan.config.section("fsdp")) == {"offload_params": True}
    assert plan.command[1:] == ["--fsdp-offload-params", "false"]
