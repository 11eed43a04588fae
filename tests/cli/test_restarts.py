"""``plait launch`` restarts and preemption: real jobs over gloo whose worker is SIGKILLed mid-training and that
resume from their own checkpoint bit for bit, on one machine and on two; a real SIGTERM to the launcher that
every worker gets, with a grace period to save, and the requeue of a SLURM job; each attempt's rendezvous store."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import SCRIPTS, alive, free_port, plait, read_report, start_plait

from plait.testing import isolate_environment
from plait_cli.cli_state import CliState
from plait_cli.launch import LaunchRequest, make_plan

RESUME = str(SCRIPTS / "resume.py")
PREEMPTED = str(SCRIPTS / "preempted.py")
STEPS, BATCH, KILL_AT = 12, 4, 5  # checkpoints every 2 steps: the restart resumes after step 4


def finish(process: subprocess.Popen[str], timeout: float = 180) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"the launcher did not end within {timeout} s:\n{output[-6000:]}")
    assert process.returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    """The parameters of the same 2-process job, never killed; they match plain PyTorch's on the whole batch."""
    root = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, root / "config")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        result = plait("launch", "--num-processes", "2", RESUME, str(root / "out.json"), str(root / "project"))
    assert result.returncode == 0, result.stderr[-6000:]
    report = read_report(root / "out.json")
    assert (report["steps"], report["restart_count"], report["resumed_from"]) == (STEPS, 0, None)

    spec = importlib.util.spec_from_file_location("plait_cli_test_train", SCRIPTS / "train.py")
    assert spec is not None and spec.loader is not None
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    expected = train.reference(world=2, batch=BATCH, steps=STEPS)
    for name, values in expected.items():
        assert max(abs(a - b) for a, b in zip(report["params"][name], values, strict=True)) < 1e-6, name
    return report["params"]  # type: ignore[no-any-return]


def _killed_job_args(tmp_path: Path, out: str) -> list[str]:
    return [RESUME, str(tmp_path / out), str(tmp_path / "project"), "--kill-at", str(KILL_AT),
            "--marker", str(tmp_path / "killed")]


def test_a_worker_killed_mid_training_is_restarted_and_the_job_ends_bit_identical(tmp_path, uninterrupted):
    result = plait("launch", "--num-processes", "2", "--max-restarts", "2", *_killed_job_args(tmp_path, "out.json"))

    assert result.returncode == 0, result.stderr[-6000:]
    assert (tmp_path / "killed").exists()  # rank 1 did SIGKILL itself after step 5
    report = read_report(tmp_path / "out.json")
    assert report["restart_count"] == 1  # TORCHELASTIC_RESTART_COUNT of the restarted workers
    assert report["resumed_from"] == 4 and report["steps"] == STEPS
    assert report["params"] == uninterrupted  # bit for bit


def test_two_machines_restart_together_and_end_bit_identical(tmp_path, uninterrupted):
    port = str(free_port())
    machines = [
        start_plait("launch", "--num-processes", "2", "--num-machines", "2", "--machine-rank", str(rank),
                    "--main-process-ip", "127.0.0.1", "--main-process-port", port, "--max-restarts", "2",
                    *_killed_job_args(tmp_path, f"m{rank}.json"))
        for rank in (0, 1)
    ]
    for machine in machines:
        finish(machine)

    assert (tmp_path / "killed").exists()  # global rank 1, on machine 1, killed itself
    report = read_report(tmp_path / "m0.json")  # written by global rank 0, on machine 0
    assert report["world_size"] == 2 and report["resumed_from"] == 4
    assert report["params"] == uninterrupted


def test_without_restarts_the_job_fails_with_the_killed_worker_s_exit_code(tmp_path):
    result = plait("launch", "--num-processes", "2", "--max-restarts", "0", *_killed_job_args(tmp_path, "out.json"))

    assert result.returncode == 128 + signal.SIGKILL
    assert "worker rank 1 failed with exit code -9" in result.stderr
    assert (tmp_path / "killed").exists() and not (tmp_path / "out.json").exists()


# --------------------------------------------------------------------------- #
# preemption: SIGTERM to the launcher
# --------------------------------------------------------------------------- #


@pytest.fixture
def scontrol(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """An ``scontrol`` of the test's own first on PATH; the environment to give the launcher, and its log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "scontrol"
    program.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{SCRIPTS / "fake_scontrol.py"}" "$@"\n')
    program.chmod(0o755)
    log = tmp_path / "scontrol.log"
    yield {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SCONTROL_LOG": str(log),
           "SLURM_JOB_ID": "4242"}, log


def _preempt(tmp_path: Path, env: dict[str, str], save_seconds: float) -> tuple[int, str, list[int], float]:
    """Start 2 workers of preempted.py, SIGTERM the launcher once both wait; its exit code, output, the workers'
    pids and the seconds from the SIGTERM to its exit."""
    workers = tmp_path / "workers"
    workers.mkdir()
    launcher = start_plait("launch", "--num-processes", "2", PREEMPTED, str(workers), str(save_seconds),
                           env={**env, "PYTHONFAULTHANDLER": "1"})
    deadline = time.monotonic() + 120
    while len(list(workers.glob("*.pid"))) < 2:
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()[0]
        time.sleep(0.05)
    pids = [int(p.read_text()) for p in workers.glob("*.pid")]
    sent = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    try:
        output, _ = launcher.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        launcher.send_signal(signal.SIGABRT)
        pytest.fail(f"plait launch did not end 90 s after SIGTERM:\n{launcher.communicate(timeout=30)[0]}")
    return launcher.returncode, output, pids, time.monotonic() - sent


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_sigterm_reaches_every_worker_which_saves_in_its_grace_and_slurm_requeues_the_job(tmp_path, scontrol):
    env, log = scontrol
    code, output, pids, _ = _preempt(tmp_path, env, save_seconds=1.5)

    assert code == 128 + signal.SIGTERM, output
    assert sorted(p.name for p in (tmp_path / "workers").glob("*.saved")) == ["0.saved", "1.saved"]
    assert not [pid for pid in pids if alive(pid)]
    assert "stopped by SIGTERM" in output
    assert _calls(log) == [["show", "job", "4242"], ["requeue", "4242"]]
    assert "requeued SLURM job 4242" in output


def test_workers_still_saving_after_the_grace_are_killed_and_a_failed_requeue_keeps_the_exit_code(tmp_path, scontrol):
    env, log = scontrol
    env = {**env, "PLAIT_PREEMPTION_GRACE": "1", "FAKE_SCONTROL_FAIL": "1"}
    code, output, pids, seconds = _preempt(tmp_path, env, save_seconds=60)

    assert code == 128 + signal.SIGTERM, output
    assert seconds < 30, output  # killed after 1 s of grace, not after the 60 s they wanted
    assert not list((tmp_path / "workers").glob("*.saved"))
    assert not [pid for pid in pids if alive(pid)]
    assert _calls(log) == [["show", "job", "4242"], ["requeue", "4242"]]
    assert "scontrol requeue 4242 failed with exit code 1: scontrol: error: Requested operation" in output


def test_a_job_that_is_not_requeueable_or_not_on_machine_0_is_not_requeued(tmp_path, scontrol):
    from plait_cli.preemption import requeue

    env, log = scontrol
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name, value in {**env, "FAKE_SCONTROL_REQUEUE": "0"}.items():
            monkeypatch.setenv(name, value)
        requeue("4242")
    assert _calls(log) == [["show", "job", "4242"]]

    state = CliState.load()
    machine_1 = make_plan(LaunchRequest(script=PREEMPTED, flags={"num_processes": 2, "num_machines": 2,
                                        "machine_rank": 1, "main_process_ip": "h"}), state.pm, env)
    assert machine_1.requeue_job is None
    assert make_plan(LaunchRequest(script=PREEMPTED), state.pm, env).requeue_job == "4242"


# --------------------------------------------------------------------------- #
# the plan and the rendezvous, without workers
# --------------------------------------------------------------------------- #


def _args(environ: dict[str, str], **fields: Any) -> dict[str, str]:
    plan = make_plan(LaunchRequest(script=PREEMPTED, **fields), CliState.load().pm, environ)
    args = plan.torchrun_args
    return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}


def test_the_grace_is_30_s_by_default_and_plait_preemption_grace_sets_it():
    assert _args({})["--shutdown-timeout"] == "30"
    assert _args({"PLAIT_PREEMPTION_GRACE": "120"})["--shutdown-timeout"] == "120"
    assert "--shutdown-timeout" not in _args({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "45"})  # torch's own, honoured
    for bad in ("soon", "-5", "1.5"):
        with pytest.raises(click.UsageError, match=f"environment variable PLAIT_PREEMPTION_GRACE='{bad}' is not valid: "
                                            f"expected the whole number of seconds"):
            _args({"PLAIT_PREEMPTION_GRACE": bad})

    help_text = " ".join(plait("launch", "--help").stdout.split())
    assert "PLAIT_PREEMPTION_GRACE seconds (default 30)" in help_text and "scontrol requeue" in help_text


def test_one_machine_without_a_port_meets_on_a_port_the_system_assigns():
    single = _args({}, flags={"num_processes": 2})
    assert single["--rdzv-backend"] == "plait-static" and single["--rdzv-endpoint"] == "127.0.0.1:0"
    assert single["--rdzv-conf"] == "machine_rank=0"
    machines = _args({}, flags={"num_processes": 4, "num_machines": 2, "machine_rank": 1, "main_process_ip": "h"},
                     rdzv_conf="timeout=60")
    assert machines["--rdzv-endpoint"] == "h:29500" and machines["--rdzv-conf"] == "timeout=60,machine_rank=1"


def test_each_attempt_s_workers_get_a_new_store_and_two_jobs_never_share_a_port():
    """Two jobs at once on one machine, two attempts each: four workers' stores on four ports, each empty."""
    from torch._C._distributed_c10d import TCPStore

    from plait_cli.rendezvous import FixedRanksRendezvous

    jobs = [FixedRanksRendezvous("127.0.0.1", 0, 0, 1, "plait", timeout=30) for _ in range(2)]
    ports = []
    for _ in range(2):
        for job in jobs:
            info = job.next_rendezvous()
            assert (info.rank, info.world_size) == (0, 1)
            store = info.bootstrap_store_info
            assert store is not None
            ports.append(store.master_port)
            worker = TCPStore(store.master_addr, store.master_port, is_master=False, timeout=_seconds(10))
            assert not worker.check(["default_pg/0//cpu/rank_1"])  # nothing a worker of an earlier attempt wrote
            worker.set("default_pg/0//cpu/rank_1", "a worker's address")
    assert len(set(ports)) == 4 and 0 not in ports


def test_under_c10d_each_round_s_workers_get_a_new_store_too():
    from torch.distributed.elastic.rendezvous import RendezvousParameters, rendezvous_handler_registry

    from plait_cli.rendezvous import C10D, register

    register()
    handler = rendezvous_handler_registry.create_handler(RendezvousParameters(C10D, "localhost:0", "job", 1, 1))
    try:
        stores = [handler.next_rendezvous().bootstrap_store_info for _ in range(2)]
    finally:
        handler.shutdown()
    assert stores[0] is not None and stores[1] is not None
    assert stores[0].master_port != stores[1].master_port


def _seconds(seconds: float) -> Any:
    import datetime

    return datetime.timedelta(seconds=seconds)
