"""``plait launch --backend xla``: one process over every device with SPMD, or one process per device
through torchrun (torch_xla's documented multi-process launcher on a TPU VM). Imported from the hook only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.config import Config


def launch(config: Config, command: Sequence[str], spmd: bool) -> int:
    """Run the job: the script in one process (SPMD), or torchrun's workers, one per device.

    :return: the job's exit code (the first failed worker's; 128+N for a signal N).
    """
    if not spmd:
        return _per_device(config, command)
    if config.num_processes != 1 or config.num_machines != 1:
        print(
            f"plait launch: xla option spmd=true runs one process that drives every device of the machine, but "
            f"{config.source_of('num_processes')} asks for {config.num_processes} processes on "
            f"{config.num_machines} machine(s): drop --num-processes, or drop --xla-spmd for one process per "
            f"device; nothing was started",
            file=sys.stderr,
        )
        return 2
    return _run([sys.executable, *command])


def _per_device(config: Config, command: Sequence[str]) -> int:
    """torchrun's workers, ``PJRT_DEVICE`` as this environment sets it: each joins torch_xla's ``xla://``
    process group, which gives it its chip (torch_xla's torchrun path)."""
    from plait_cli.torchrun import run_job

    nproc = config.num_processes // config.num_machines
    if config.num_machines == 1:
        rendezvous = ["--standalone"]
    else:
        rendezvous = ["--node-rank", str(config.machine_rank), "--master-addr", str(config.main_process_ip),
                      "--master-port", str(config.main_process_port or 29500)]
    script = list(command)
    module = ["--module"] if script and script[0] == "-m" else []
    arguments = ["--nnodes", str(config.num_machines), "--nproc-per-node", str(nproc), *rendezvous, *module,
                 *(script[1:] if module else script)]
    return run_job(arguments, config.machine_rank, quiet=False, requeue_job=None)


def _run(argv: list[str]) -> int:
    """Run ``argv`` in the foreground; SIGTERM and SIGINT go to it, its exit code comes back."""
    process = subprocess.Popen(argv, env=os.environ.copy())

    def forward(signum: int, frame: Any) -> None:
        process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
