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


@hookimpl(trylast=True)
def plait_process_environment(config: Config) -> ProcessEnvironment:
    from plait.environment import ProcessEnvironment

    return ProcessEnvironment(rank=0, world_size=1, local_rank=0, local_world_size=1)


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

    return DistributedType.NO


@hookimpl(trylast=True)
def plait_shutdown(accelerator: Accelerator) -> bool:
    return True
