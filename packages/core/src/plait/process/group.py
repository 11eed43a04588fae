"""The default process group: started from the launcher's variables, destroyed at the end or at exit."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from plait.process.launch_variables import detect, export_for_torch

if TYPE_CHECKING:
    from plait.config import Config
    from plait.process.environment import ProcessEnvironment

#: Whether this module started the default process group (and so must destroy it).
_started = False
#: How long the group's worker threads get, without the GIL, to release the last collectives' tensors.
_THREAD_GRACE_SECONDS = 0.05


def start(config: Config) -> ProcessEnvironment:
    """This process's place in the job; with several processes, the default group is started
    (nccl on CUDA, gloo on CPU) unless something already started it."""
    global _started
    environment = detect(os.environ)
    if environment.world_size == 1:
        return environment
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        export_for_torch(os.environ)
        use_cuda = torch.cuda.is_available() and not config.cpu
        if use_cuda:
            torch.cuda.set_device(environment.local_rank % torch.cuda.device_count())
        backend = config.process_group_backend or ("nccl" if use_cuda else "gloo")
        dist.init_process_group(
            backend,
            timeout=datetime.timedelta(seconds=config.process_group_timeout),
            rank=environment.rank,
            world_size=environment.world_size,
        )
        _started = True
        import atexit

        atexit.register(finish)  # even when no Accelerator is left to shut down at exit
    return environment


def finish() -> None:
    """Destroy the process group :func:`start` started, then let its worker threads finish.

    After a gloo collective returns, its worker thread still drops its own references to
    the tensors; when that is the last reference to a Python tensor it needs the GIL, and
    if the interpreter is already finalizing, the process aborts ("terminate called without
    an active exception"). A group still referenced (by a DistributedDataParallel model)
    keeps its threads after it is destroyed, so wait a moment without the GIL for them.
    No collective here: a process that failed must not wait for the others at its exit.
    """
    global _started
    if not _started:
        return
    _started = False
    import time

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    time.sleep(_THREAD_GRACE_SECONDS)
