"""Running a job through ``torch.distributed.run`` (torchrun's elastic agent) in ``plait launch``'s process:
torchrun's arguments, and the job's exit code, signals and requeueing.

The agent runs with plait's rendezvous backends (:mod:`plait_cli.rendezvous`), so that each restart's workers
meet in a new store, and with the preemption grace period (:mod:`plait_cli.preemption`) as its shutdown timeout.

What a person sees: with one process the worker writes to the terminal itself; with more, each worker line is
prefixed with its global rank (``[rank1]: loss 0.25``), through torch's ``--tee`` (:mod:`plait_cli.worker_output`).
plait gives the workers their ``OMP_NUM_THREADS`` itself (:func:`worker_threads`), so torch's banner about
setting it never shows.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from plait_cli.launch_flags import MACHINE_RANK_KEY, RENDEZVOUS_BACKENDS, fail
from plait_cli.preemption import DEFAULT_GRACE, GRACE_VARIABLE, requeue
from plait_cli.worker_output import WorkerOutput

if TYPE_CHECKING:
    from plait_cli.launch import LaunchRequest


def worker_threads(nproc: int, environ: Mapping[str, str], on_cpu: bool) -> int | None:
    """Each worker's ``OMP_NUM_THREADS`` when ``nproc`` workers share this machine and neither
    ``--num-cpu-threads-per-process`` nor the launcher's own ``OMP_NUM_THREADS`` says, as HF Accelerate
    chooses it: workers training on the CPU share the CPUs this process may use (at least 1 each); workers
    with a GPU get 1, torch's agent's own choice, which it would announce in a five-line banner were plait
    not to set it. ``None`` for one worker: torch's default, all the CPUs."""
    if nproc < 2 or "OMP_NUM_THREADS" in environ:
        return None
    if not on_cpu:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // nproc)


def torchrun_args(request: LaunchRequest, config: Any, nproc: int, grace: int | None) -> list[str]:
    """torchrun's arguments for ``request`` under the resolved ``config``, ``nproc`` workers on this machine, and
    ``grace`` seconds between a worker's SIGTERM and its SIGKILL (``None``: torch's own variable decides)."""
    args = [
        "--nnodes", str(config.num_machines),
        "--nproc-per-node", str(nproc),
        "--max-restarts", str(request.max_restarts),
        "--monitor-interval", str(request.monitor_interval),
    ]
    port = config.main_process_port
    conf = request.rdzv_conf
    # plait's rendezvous backends (plait_cli.rendezvous): torch's, with a new store for each restart's workers.
    # One machine without a port meets on a port the system assigns as it binds it, so two jobs cannot collide.
    if request.rdzv_backend == "c10d":
        endpoint = f"{config.main_process_ip or 'localhost'}:{port if port is not None else 29500}"
        if config.num_machines == 1 and port is None:
            endpoint = "localhost:0"
        args += ["--node-rank", str(config.machine_rank), "--rdzv-backend", RENDEZVOUS_BACKENDS["c10d"],
                 "--rdzv-endpoint", endpoint, "--rdzv-id", os.environ.get("SLURM_JOB_ID", "plait")]
    else:  # fixed machine ranks, as torchrun's static rendezvous
        port = port if port is not None else 0 if config.num_machines == 1 else 29500
        args += ["--rdzv-backend", RENDEZVOUS_BACKENDS["static"],
                 "--rdzv-endpoint", f"{config.main_process_ip or '127.0.0.1'}:{port}", "--rdzv-id", "plait"]
        conf = ",".join(filter(None, [conf, f"{MACHINE_RANK_KEY}={config.machine_rank}"]))
    if conf:
        args += ["--rdzv-conf", conf]
    if grace is not None and _agent_has_shutdown_timeout(grace):  # the workers' time between SIGTERM and SIGKILL
        args += ["--shutdown-timeout", str(grace)]
    if request.role:
        args += ["--role", request.role]
    if request.log_dir is not None:
        args += ["--log-dir", request.log_dir]
    if request.tee is not None:
        check_tee(request.tee)
        args += ["--tee", request.tee]
    elif config.num_processes > 1:  # each line of several workers prefixed with its rank (plait_cli.worker_output)
        args += ["--tee", "3"]
    if request.module:
        args.append("--module")
    if request.no_python:
        args.append("--no-python")
    return [*args, request.script, *request.script_args]


def _agent_has_shutdown_timeout(grace: int) -> bool:
    """Whether this torch's agent takes ``--shutdown-timeout`` (older ones, torch 2.9 among them, give the
    workers a fixed 30 s after SIGTERM; a ``PLAIT_PREEMPTION_GRACE`` of another length is then said to be
    ignored)."""
    import torch
    from torch.distributed.run import get_args_parser

    if "--shutdown-timeout" in get_args_parser()._option_string_actions:
        return True
    if grace != DEFAULT_GRACE:
        print(f"plait launch: torch {torch.__version__}'s elastic agent has no --shutdown-timeout: workers get its "
              f"fixed 30 s after a SIGTERM, not {GRACE_VARIABLE}={grace} (a newer torch honours it)", file=sys.stderr)
    return False


def check_tee(tee: str) -> None:
    """Refuse a ``--tee`` torchrun would not read."""
    from torch.distributed.elastic.multiprocessing import Std

    try:
        Std.from_str(tee)
    except ValueError:
        raise fail(f"--tee {tee!r} is not valid: expected 0, 1, 2 or 3, or per local rank as 0:3,1:1") from None


def run_job(arguments: list[str], machine_rank: int, quiet: bool, requeue_job: str | None) -> int:
    """Run torch's elastic agent in this process with torchrun's ``arguments``; return the job's exit code (the
    first failed worker's, 128+N for a signal N). After a SIGTERM, SLURM job ``requeue_job`` is requeued.
    With ``--tee`` each worker line is prefixed with its rank (:class:`plait_cli.worker_output.WorkerOutput`)."""
    from torch.distributed.run import get_args_parser, run

    from plait_cli import rendezvous

    rendezvous.register()
    output = WorkerOutput(arguments)
    with output as arguments:
        return _run(lambda: run(get_args_parser().parse_args(arguments)), machine_rank, quiet, requeue_job, output)


def _run(job: Callable[[], object], machine_rank: int, quiet: bool, requeue_job: str | None, output: WorkerOutput) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous import RendezvousError

    try:
        job()
    except RendezvousError as exc:
        print(f"plait launch: the rendezvous of machine {machine_rank} failed: {exc}", file=sys.stderr)
        return 1
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        detail = "" if quiet else f"\n{exc.format_msg()}"
        print(f"plait launch: worker rank {rank} failed with exit code {failure.exitcode}{detail}", file=sys.stderr)
        code = failure.exitcode
        return 128 - code if code < 0 else (code or 1)
    except SignalException as exc:
        print(f"plait launch: stopped by {exc.sigval.name}; every worker was stopped", file=sys.stderr)
        if exc.sigval == signal.SIGTERM and requeue_job is not None:
            requeue(requeue_job)
        # The job is over and its workers are gone: leave now. Python's teardown of torch's rendezvous store
        # and threads, which never matters after a signal, once kept a stopped launcher alive in CI.
        output.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + int(exc.sigval))
    except KeyboardInterrupt:
        return 130
    return 0
