"""``plait launch``: real jobs over gloo through torch.distributed.run, multi-machine on localhost, SLURM's
variables, exit codes, Ctrl-C, and every bad input refused before a process starts."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import SCRIPTS, alive, free_port, plait, read_report, start_plait

from plait.config import resolve_config
from plait_cli.cli_state import CliState
from plait_cli.launch import LaunchRequest, make_plan

TRAIN = str(SCRIPTS / "train.py")
MARKER = str(SCRIPTS / "marker.py")


def reference(world: int, batch: int, steps: int) -> dict[str, list[float]]:
    spec = importlib.util.spec_from_file_location("plait_cli_test_train", TRAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.reference(world, batch, steps)  # type: ignore[no-any-return]


def assert_same_params(got: dict[str, list[float]], expected: dict[str, list[float]], atol: float = 1e-6) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(torch.tensor(got[name]), torch.tensor(expected[name]), atol=atol, rtol=0)


def finish(process, timeout: float = 240) -> str:  # type: ignore[no-untyped-def]
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-6000:]
    return output  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- #
# real jobs
# --------------------------------------------------------------------------- #


def test_two_processes_train_like_one_process_with_the_whole_batch_and_get_the_resolved_config(tmp_path):
    out = tmp_path / "report.json"
    config_file = tmp_path / "plait.yaml"
    config_file.write_text("mixed_precision: fp16\ngradient_accumulation_steps: 3\nddp:\n  bucket_cap_mb: 10\n")

    result = plait(
        "launch", "--num-processes", "2", "--config-file", str(config_file), "--mixed-precision", "no",
        "--gradient-accumulation-steps", "1", "--ddp-find-unused-parameters", TRAIN, str(out), "--batch", "4",
    )

    assert result.returncode == 0, result.stderr[-6000:]
    report = read_report(out)
    assert report["world_size"] == 2
    assert report["backend"] == "ddp"  # the default for more than one process
    # Flags win over the file; the file's other keys and section values still arrive.
    assert report["mixed_precision"] == "no"
    assert report["gradient_accumulation_steps"] == 1
    assert "find_unused_parameters=True" in report["backend_options"]
    assert "bucket_cap_mb=10" in report["backend_options"]
    assert report["environment"]["PLAIT_CONFIG_FILE"] == str(config_file)
    assert_same_params(report["params"], reference(world=2, batch=4, steps=10))


def test_two_machines_on_localhost_form_one_job_with_the_parameters_of_a_two_process_launch(tmp_path):
    port = str(free_port())
    machines = [
        start_plait("launch", "--num-processes", "2", "--num-machines", "2", "--machine-rank", str(rank),
                    "--main-process-ip", "127.0.0.1", "--main-process-port", port, TRAIN, str(tmp_path / f"m{rank}.json"))
        for rank in (0, 1)
    ]
    for machine in machines:
        finish(machine)

    report = read_report(tmp_path / "m0.json")  # written by global rank 0, on machine 0
    assert not (tmp_path / "m1.json").exists()
    assert report["world_size"] == 2
    assert_same_params(report["params"], reference(world=2, batch=4, steps=10))


def test_srun_plait_launch_reads_the_machines_from_slurm_variables(tmp_path):
    """What `srun --nodes 2 --ntasks-per-node 1 plait launch ...` sets, on localhost."""
    port = str(free_port())
    machines = [
        start_plait(
            "launch", "--num-processes", "2", TRAIN, str(tmp_path / f"s{node}.json"), "--batch", "3",
            env={"SLURM_JOB_ID": "4242", "SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2",
                 "SLURM_NODEID": str(node), "SLURM_PROCID": str(node), "SLURM_NTASKS": "2",
                 "SLURM_STEP_NODELIST": "localhost", "MASTER_PORT": port},
        )
        for node in (0, 1)
    ]
    for machine in machines:
        finish(machine)

    report = read_report(tmp_path / "s0.json")
    assert report["world_size"] == 2
    assert_same_params(report["params"], reference(world=2, batch=3, steps=10))


def test_a_module_with_c10d_rendezvous_and_per_rank_logs(tmp_path):
    logs = tmp_path / "logs"
    result = plait(
        "launch", "--num-processes", "2", "--rdzv-backend", "c10d", "--log-dir", str(logs), "--tee", "3",
        "-m", "train", str(tmp_path / "r.json"), "--steps", "3",
        env={"PYTHONPATH": str(SCRIPTS)},
    )

    assert result.returncode == 0, result.stderr[-6000:]
    assert read_report(tmp_path / "r.json")["world_size"] == 2
    assert_same_params(read_report(tmp_path / "r.json")["params"], reference(world=2, batch=4, steps=3))
    written = sorted(p.name for p in logs.rglob("*.log"))
    assert written.count("stdout.log") == 2 and written.count("stderr.log") == 2


def test_the_job_exit_code_is_the_command_exit_code(tmp_path):
    result = plait("launch", "--num-processes", "2", str(SCRIPTS / "exit_code.py"), "3")

    assert result.returncode == 3
    assert "worker rank 1 failed with exit code 3" in result.stderr


def test_ctrl_c_stops_every_worker(tmp_path):
    # PYTHONFAULTHANDLER: should the launcher hang, SIGABRT makes it print every thread's stack.
    launcher = start_plait("launch", "--num-processes", "2", str(SCRIPTS / "sleep_forever.py"), str(tmp_path),
                           env={"PYTHONFAULTHANDLER": "1"})
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0]
        time.sleep(0.1)
    pids = [int(p.read_text()) for p in tmp_path.glob("*.pid")]

    launcher.send_signal(signal.SIGINT)
    try:
        output, _ = launcher.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        running = launcher.poll() is None
        if running:
            launcher.send_signal(signal.SIGABRT)
        output, _ = launcher.communicate(timeout=30)
        live_workers = [pid for pid in pids if alive(pid)]
        pytest.fail(f"plait launch did not end 60 s after SIGINT (launcher still running: {running}, "
                    f"workers still running: {live_workers}); its output:\n{output}")

    assert launcher.returncode == 128 + signal.SIGINT, output
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_backend_that_owns_launching_launches_with_its_own_flags(tmp_path, plugin_site):
    marker = tmp_path / "marker"

    result = plait("launch", "--backend", "toy", "--toy-loss-scale", "0.5", MARKER, str(marker), site=plugin_site)

    assert result.returncode == 0, result.stderr
    backend, section = marker.read_text().split(" ", 1)
    assert backend == "toy"  # the toy backend's launcher ran it, not torchrun
    assert section == '{"loss_scale": 0.5}'


# --------------------------------------------------------------------------- #
# bad input: refused before any process starts
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--num-processes", "0"], "--num-processes 0 is not valid: expected a whole number of at least 1"),
        (["--backend", "xla"], "backend 'xla' is not installed: pip install plait[xla] (installed backends: single, ddp"),
        (["--backend", "dpp"], "unknown backend 'dpp' (did you mean 'ddp'?)"),
        (["--num-processes", "3", "--num-machines", "2", "--main-process-ip", "127.0.0.1"],
         "--num-processes 3 is not a multiple of --num-machines 2"),
        (["--num-processes", "2", "--num-machines", "2"], "--num-machines 2 needs --main-process-ip"),
        (["--num-machines", "2", "--machine-rank", "2", "--main-process-ip", "h"], "machine_rank=2 is not valid"),
        (["--config-file", "missing.yaml"], "--config-file 'missing.yaml' does not exist"),
        (["--tee", "7", "--num-processes", "1"], "--tee '7' is not valid"),
    ],
)
def test_bad_launch_flags_are_refused_before_any_process_starts(args, expected, no_workers_started):
    result = plait("launch", *args, MARKER, str(no_workers_started))

    assert result.returncode == 2, result.stderr
    message = " ".join(result.stderr.split())
    assert expected in message
    assert "nothing was started" in message


def test_a_missing_script_or_module_is_refused(tmp_path):
    result = plait("launch", "--num-processes", "2", str(tmp_path / "nope.py"))
    assert result.returncode == 2
    assert f"script '{tmp_path / 'nope.py'}' does not exist" in result.stderr

    result = plait("launch", "-m", "no_such_module_anywhere")
    assert result.returncode == 2
    assert "module 'no_such_module_anywhere' was not found" in result.stderr


def test_a_bad_backend_option_or_malformed_config_file_is_refused(tmp_path, no_workers_started):
    bad_option = tmp_path / "bad_option.yaml"
    bad_option.write_text("backend: ddp\nddp:\n  comm_hook: fp8\n")
    result = plait("launch", "--config-file", str(bad_option), MARKER, str(no_workers_started))
    assert result.returncode == 2
    assert "ddp option comm_hook='fp8' is not valid" in result.stderr

    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("num_processes: 2\nmixed_precison: bf16\n")
    result = plait("launch", "--config-file", str(malformed), MARKER, str(no_workers_started))
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert f"config file {malformed}, line 2: unknown key 'mixed_precison' (did you mean 'mixed_precision'?)" in message


def test_unknown_flags_suggest_the_closest_one(no_workers_started):
    result = plait("launch", "--num-proceses", "2", MARKER, str(no_workers_started))

    assert result.returncode == 2
    assert "No such option '--num-proceses'" in result.stderr
    assert "'--num-processes'" in result.stderr.split("Did you mean")[1]


def test_srun_with_several_tasks_per_node_is_refused(no_workers_started):
    env = {"SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NODEID": "0", "SLURM_JOB_ID": "1"}
    result = plait("launch", "--num-processes", "4", MARKER, str(no_workers_started), env=env)

    assert result.returncode == 2
    assert "srun --ntasks-per-node=1 plait launch" in result.stderr


# --------------------------------------------------------------------------- #
# the plan: torchrun's arguments and the workers' environment
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def state() -> CliState:
    return CliState.load()


def plan_for(state: CliState, environ: dict[str, str] | None = None, **fields):  # type: ignore[no-untyped-def]
    return make_plan(LaunchRequest(script=MARKER, **fields), state.pm, environ or {})


def test_the_workers_environment_resolves_to_the_launchers_config(state, tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("log_with: [tensorboard]\nproject_dir: /tmp/p\nddp:\n  static_graph: true\n")
    plan = plan_for(
        state, config_file=str(config_file), flags={"num_processes": 2, "mixed_precision": "bf16", "cpu": True},
        sections={"ddp": {"comm_hook": "bf16"}}, gpu_ids="0,1",
    )

    assert plan.env["PLAIT_DDP"] == '{"static_graph": true, "comm_hook": "bf16"}'
    assert plan.env["CUDA_VISIBLE_DEVICES"] == "0,1"
    worker = resolve_config(environ=plan.env, extra_backends=("ddp",))
    assert worker == plan.config
    assert (worker.backend, worker.num_processes, worker.mixed_precision, worker.cpu) == ("ddp", 2, "bf16", True)
    assert worker.log_with == ("tensorboard",)


def test_torchrun_arguments_for_each_rendezvous(state):
    single = plan_for(state, flags={"num_processes": 2})
    assert single.torchrun_args[:4] == ["--nnodes", "1", "--nproc-per-node", "2"]
    assert single.torchrun_args[single.torchrun_args.index("--rdzv-endpoint") + 1] == "127.0.0.1:0"  # a free port

    machines = plan_for(state, flags={"num_processes": 8, "num_machines": 2, "machine_rank": 1,
                                      "main_process_ip": "10.0.0.1"})
    args = machines.torchrun_args
    assert args[args.index("--nproc-per-node") + 1] == "4"
    assert args[args.index("--rdzv-conf") + 1] == "machine_rank=1"  # plait-static's fixed machine rank
    assert args[args.index("--rdzv-endpoint") + 1] == "10.0.0.1:29500"

    elastic = plan_for(state, rdzv_backend="c10d", flags={"num_processes": 4, "num_machines": 2,
                                                          "main_process_ip": "head", "main_process_port": 1234})
    args = elastic.torchrun_args
    assert args[args.index("--rdzv-endpoint") + 1] == "head:1234"
    assert args[-1] == MARKER

    gpus = plan_for(state, gpu_ids="2,3,5")  # one process per listed GPU
    assert gpus.config.num_processes == 3 and gpus.env["CUDA_VISIBLE_DEVICES"] == "2,3,5"


def test_under_srun_the_plan_takes_node_count_rank_and_address_from_slurm(state):
    environ = {"SLURM_JOB_ID": "77", "SLURM_STEP_NUM_NODES": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NODEID": "2",
               "SLURM_STEP_NODELIST": "gpu[07-10]"}
    plan = plan_for(state, environ, flags={"num_processes": 16})

    assert (plan.config.num_machines, plan.config.machine_rank) == (4, 2)
    assert plan.config.main_process_ip == "gpu07"
    assert plan.config.main_process_port == 29500 + 77  # the same on every node of the job
    assert plan.nproc_per_node == 4
