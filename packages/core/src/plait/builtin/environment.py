"""Environment defaults: one process, its device, its kind of run, its options."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait._markers import hookimpl
from plait.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator
    from plait.config import Config
    from plait.environment import ProcessEnvironment


@hookimpl(trylast=True)
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> object:
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"backend_options={options!r} is a {type(options).__qualname__} object that backend {backend!r} "
            f"does not accept: pass a dict of options, or select the backend that defines it"
        )
    if backend == "single" and options:
        raise ConfigError(
            f"backend 'single' takes no options, but its section sets {', '.join(map(repr, options))}: "
            f"remove the 'single:' section"
        )
    # A third-party backend that does not validate its section gets it as a plain dict.
    return dict(options)


#: Whether this module started the default process group (and so must destroy it).
_STARTED_GROUP = False


@hookimpl(trylast=True)
def plait_process_environment(config: Config) -> ProcessEnvironment:
    global _STARTED_GROUP
    from plait.launcher_env import detect, export_for_torch

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
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=config.process_group_timeout),
            rank=environment.rank,
            world_size=environment.world_size,
        )
        _STARTED_GROUP = True
        import atexit

        atexit.register(_finish_group)  # even when no Accelerator is left to shut down at exit
    return environment


def _finish_group() -> None:
    """Destroy the process group this module started, then let its worker threads finish.

    After a gloo collective returns, its worker thread still drops its own references to
    the tensors; when that is the last reference to a Python tensor it needs the GIL, and
    if the interpreter is already finalizing, the process aborts ("terminate called without
    an active exception"). A group still referenced (by a DistributedDataParallel model)
    keeps its threads after it is destroyed, so wait a moment without the GIL for them.
    No collective here: a process that failed must not wait for the others at its exit.
    """
    global _STARTED_GROUP
    if not _STARTED_GROUP:
        return
    _STARTED_GROUP = False
    import time

    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    time.sleep(_THREAD_GRACE_SECONDS)


#: How long the group's worker threads get, without the GIL, to release the last collectives' tensors.
_THREAD_GRACE_SECONDS = 0.05


@hookimpl(trylast=True)
def plait_device(config: Config, environment: ProcessEnvironment) -> torch.device:
    import torch

    if config.cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", environment.local_rank))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@hookimpl(trylast=True)
def plait_distributed_type(accelerator: Accelerator) -> str:
    from plait.environment import DistributedType

    if accelerator.num_processes == 1:
        return DistributedType.NO
    return DistributedType.MULTI_GPU if accelerator.device.type == "cuda" else DistributedType.MULTI_CPU


@hookimpl(trylast=True)
def plait_shutdown(accelerator: Accelerator) -> bool:
    _finish_group()
    return True
