"""``plait launch`` with HF Accelerate's ``accelerate launch`` flags: what each maps to, as the workers see it,
the contradictions Accelerate refuses, and the flags plait cannot honour, refused before a process starts.

Most checks parse the real command in this process, with the launch itself replaced by a recorder of the
plan (the resolved config, torchrun's arguments, the workers' environment); two start real processes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import SCRIPTS, free_port, plait, read_report

import plait_cli.launch as launch_module
from plait.config import resolve_config
from plait.plugins import discovery, load_all, new_manager
from plait_cli.cli_state import CliState
from plait_cli.main import build_cli

MARKER = str(SCRIPTS / "marker.py")
REPORT = str(SCRIPTS / "report_config.py")


# --------------------------------------------------------------------------- #
# real jobs
# --------------------------------------------------------------------------- #


def test_accelerate_spellings_reach_the_workers_config(tmp_path):
    out = tmp_path / "report.json"
    result = plait(
        "launch", "--multi_gpu", "--cpu", "--num_processes", "2", "--mixed_precision", "bf16",
        "--gradient_accumulation_steps", "4", "--debug", "--dynamo_backend", "eager",
        "--num_cpu_threads_per_process", "2", "--main_process_port", str(free_port()), "--same_network",
        "--main_training_function", "main", REPORT, str(out),
    )

    assert result.returncode == 0, result.stderr[-6000:]
    report = read_report(out)
    assert (report["backend"], report["num_processes"], report["device"]) == ("ddp", 2, "cpu")
    assert (report["mixed_precision"], report["gradient_accumulation_steps"]) == ("bf16", 4)
    assert (report["cpu"], report["debug"], report["dynamo_backend"]) == (True, True, "eager")
    assert report["omp_num_threads"] == "2"
    assert report["backend_options"]["find_unused_parameters"] is False  # ddp's options object, at its defaults


def test_a_flag_plait_cannot_honour_starts_nothing(no_workers_started):
    result = plait("launch", "--use_megatron_lm", "--num_processes", "2", MARKER, str(no_workers_started))

    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "--use_megatron_lm is not supported" in message and "--use_fsdp or --use_deepspeed" in message
    assert "nothing was started" in message


# --------------------------------------------------------------------------- #
# the parsed command: each flag's plan, no process started
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def state() -> CliState:
    return CliState.load()


@pytest.fixture
def launch(state, monkeypatch):  # type: ignore[no-untyped-def]
    """``launch(*flags)``: parse ``plait launch FLAGS marker.py out`` for real; return (exit code, output, plan)."""
    plans: list[Any] = []
    monkeypatch.setattr(launch_module, "execute", lambda plan, pm: plans.append(plan) or 0)

    def run(*flags: str, script: str = MARKER, cli_state: CliState | None = None) -> tuple[int, str, Any]:
        result = CliRunner().invoke(build_cli(cli_state or state), ["launch", *flags, script, "out"])
        message = " ".join(result.output.split())
        return result.exit_code, message, plans[-1] if plans and result.exit_code == 0 else None

    return run


def planned(launch, *flags: str, **kwargs: Any) -> Any:  # type: ignore[no-untyped-def]
    code, message, plan = launch(*flags, **kwargs)
    assert code == 0, message
    return plan


def test_paradigm_flags_select_backends_and_flags_override_an_accelerate_config_file(launch, tmp_path):
    assert planned(launch, "--multi_gpu", "--num_processes", "2").config.backend == "ddp"
    assert planned(launch, "--multi-gpu", "--num-processes", "2").config.backend == "ddp"  # either spelling
    assert planned(launch, "--multi_gpu", "--backend", "ddp", "--num_processes", "2").config.backend == "ddp"

    accelerate_file = tmp_path / "default_config.yaml"  # what `accelerate config` writes for one GPU
    accelerate_file.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nmixed_precision: fp16\n"
                               "num_processes: 1\nuse_cpu: false\ngpu_ids: all\n")
    plan = planned(launch, "--config_file", str(accelerate_file), "--multi_gpu", "--num_processes", "2", "--cpu")
    assert (plan.config.backend, plan.config.num_processes, plan.config.mixed_precision) == ("ddp", 2, "fp16")
    assert plan.config.cpu is True
    assert plan.env["PLAIT_CONFIG_FILE"] == str(accelerate_file)


def test_top_level_flags_reach_the_workers_environment(launch):
    plan = planned(
        launch, "--num_processes", "2", "--mixed_precision", "fp16", "--gradient_accumulation_steps", "8",
        "--debug", "--dynamo_backend", "inductor", "--num_cpu_threads_per_process", "3", "--gpu_ids", "1,2",
    )

    worker = resolve_config(environ=plan.env, extra_backends=("ddp",))
    assert worker == plan.config
    assert (worker.num_processes, worker.mixed_precision, worker.gradient_accumulation_steps) == (2, "fp16", 8)
    assert (worker.debug, worker.dynamo_backend) == (True, "inductor")
    assert plan.env["OMP_NUM_THREADS"] == "3" and plan.env["CUDA_VISIBLE_DEVICES"] == "1,2"


def test_launcher_flags_become_torchruns_arguments(launch):
    plan = planned(
        launch, "--num_processes", "4", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "head",
        "--main_process_port", "1234", "--rdzv_backend", "c10d", "--rdzv_conf", "join_timeout=30", "--role", "trainer",
        "--max_restarts", "2", "--monitor_interval", "0.5", "--log_dir", "logs", "-t", "3", "-q", "--same_network",
        "--main_training_function", "main",
    )

    args = plan.torchrun_args
    pairs = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert pairs["--nnodes"] == "2" and pairs["--nproc-per-node"] == "2" and pairs["--node-rank"] == "1"
    assert pairs["--rdzv-endpoint"] == "head:1234" and pairs["--rdzv-conf"] == "join_timeout=30"
    assert pairs["--role"] == "trainer" and pairs["--max-restarts"] == "2" and pairs["--monitor-interval"] == "0.5"
    assert pairs["--log-dir"] == "logs" and pairs["--tee"] == "3"
    assert plan.quiet is True

    program = planned(launch, "--no_python", script="true")  # a program on PATH, run as it is
    assert program.command == ["true", "out"] and "--no-python" in program.torchrun_args


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--use_fsdp", "--use_deepspeed"], "--use_fsdp (backend fsdp) and --use_deepspeed (backend zero) cannot go "
                                            "together: choose one backend"),
        (["--multi_gpu", "--backend", "single"], "--multi_gpu (backend ddp) and --backend single (backend single) "
                                                 "cannot go together"),
        (["--multi_gpu", "--num_processes", "1"], "--multi_gpu needs at least 2 processes, but --num-processes 1 asks "
                                                  "for 1"),
        (["--multi_gpu", "--gpu_ids", "3"], "--multi_gpu needs at least 2 processes, but --gpu-ids 3 asks for 1"),
        (["--module", "--no_python"], "--module and --no_python cannot go together"),
        (["--num_processes", "1", "--ddp_bucket_cap_mb", "10"],
         "--ddp-bucket-cap-mb sets options of the ddp backend, but backend single runs"),
        (["--mixed_precision", "fp8"], "--mixed-precision fp8: mixed_precision='fp8' is not supported"),
        (["--dynamo_backend", "fastest"], "--dynamo-backend fastest: dynamo_backend='fastest' is not valid"),
        (["--num_cpu_threads_per_process", "0"], "Invalid value for '--num-cpu-threads-per-process'"),
    ],
)
def test_contradictions_and_bad_values_are_refused(launch, flags, expected):
    code, message, plan = launch(*flags)

    assert code == 2 and plan is None
    assert expected in message


@pytest.mark.parametrize(
    ("flags", "advice"),
    [
        (["--use_megatron_lm"], "--use_fsdp or --use_deepspeed"),
        (["--megatron_lm_tp_degree", "2"], "--use_fsdp or --use_deepspeed"),
        (["--use-megatron-lm"], "--use_fsdp or --use_deepspeed"),  # Accelerate's dash spelling too
        (["--tpu"], "--backend xla"),
        (["--tpu_use_sudo"], "--backend xla"),
        (["--use_xpu"], "CUDA GPUs"),
        (["--ipex"], "Intel Extension for PyTorch"),
        (["--use_mps_device"], "MPS device by itself"),
        (["--fp8_backend", "te"], "--mixed_precision bf16"),
        (["--fp8_format=E4M3"], "--mixed_precision bf16"),
        (["--use_parallelism_config"], "--use_fsdp"),
        (["--parallelism_config_tp_size", "2"], "--use_fsdp"),
        (["--mpirun_hostfile", "hosts"], "--num_machines, --machine_rank and --main_process_ip"),
        (["--deepspeed_multinode_launcher", "pdsh"], "--num_machines, --machine_rank and --main_process_ip"),
        (["--enable_cpu_affinity"], "numactl"),
        (["--dynamo_mode", "max-autotune"], "torch.compile(model, ...)"),
        (["--aws_access_key_id", "key"], "SageMaker"),
    ],
)
def test_flags_plait_cannot_honour_name_what_to_use_instead(launch, flags, advice):
    code, message, plan = launch("--num_processes", "2", *flags)

    assert code == 2 and plan is None
    assert f"{flags[0].split('=')[0]} is not supported: " in message
    assert advice in message and "nothing was started" in message


def test_a_backend_that_is_not_installed_is_named_with_its_pip_install(launch, monkeypatch):
    """As in the cli session, where plait-zero and plait-fsdp are not installed."""
    pm = new_manager()
    load_all(pm, disabled=("zero", "fsdp"))
    without = CliState(pm=pm)
    installed = discovery.names
    monkeypatch.setattr(discovery, "names", lambda group: tuple(
        name for name in installed(group) if group != discovery.BACKENDS_GROUP or name not in ("zero", "fsdp")))

    code, message, _ = launch("--use_deepspeed", "--num_processes", "2", cli_state=without)
    assert code == 2 and "backend 'zero' is not installed: pip install plait[zero]" in message
    code, message, _ = launch("--use_deepspeed", "--zero_stage", "3", cli_state=without)
    assert code == 2 and "--zero_stage needs the zero backend: backend 'zero' is not installed: pip install plait[zero]" in message
    code, message, _ = launch("--offload_optimizer_device", "cpu", cli_state=without)
    assert code == 2 and "pip install plait[zero]" in message
    code, message, _ = launch("--use_fsdp", "--fsdp_sharding_strategy", "SHARD_GRAD_OP", cli_state=without)
    assert code == 2 and "--fsdp_sharding_strategy needs the fsdp backend" in message and "pip install plait[fsdp]" in message
    if "xla" not in installed(discovery.BACKENDS_GROUP):  # plait-xla lives in the xla session's torch 2.9 venv
        code, message, _ = launch("--xla-spmd", cli_state=without)
        assert code == 2 and "--xla-spmd needs the xla backend" in message and "pip install plait[xla]" in message


def test_help_lists_plaits_spellings_and_says_accelerates_work(state):
    result = CliRunner().invoke(build_cli(state), ["launch", "--help"])

    assert result.exit_code == 0
    text = " ".join(result.output.split())
    options, epilog = text.split("HF Accelerate's `accelerate launch` flags work too")
    assert "--num-processes" in options and "--multi-gpu" in options and "--use-deepspeed" in options
    assert "--num_processes" not in options and "--multi_gpu" not in options  # the second spellings are unlisted
    assert "--num_processes" in epilog
