"""plait backend ``ddp``: DistributedDataParallel. Only what differs from core's defaults.

Core already starts the process group (nccl on CUDA, gloo on CPU), shards
dataloaders, and runs collectives; ``no_sync`` comes from DDP's own
``model.no_sync()``, which core's default uses. This module wraps and unwraps
models and owns the ``ddp:`` options. torch is imported inside
hook bodies only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait_ddp.options import DDPOptions

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator

NAME = "ddp"
__all__ = ["DDPOptions"]


@hookimpl
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> DDPOptions | None:
    if backend != NAME:
        return None
    return DDPOptions.from_section(options)


@hookimpl
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module | None:
    if accelerator.backend != NAME:
        return None
    if evaluation_mode or accelerator.num_processes == 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    options: DDPOptions = accelerator.backend_options
    device_ids = [accelerator.device.index] if accelerator.device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids, **options.ddp_kwargs())
    hook = options.comm_hook_function(accelerator.device.type)
    if hook is not None:
        wrapped.register_comm_hook(state=None, hook=hook)
    return wrapped


@hookimpl
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module | None:
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return accelerator.unwrap_model(model.module, keep_fp32_wrapper=keep_fp32_wrapper)
    return None


@hookimpl
def plait_env_report() -> list[tuple[str, str]]:
    try:
        import torch.distributed as dist

        backends = [name for name, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available())) if ok]
        return [("plait-ddp process-group backends", ", ".join(backends) or "none")]
    except Exception as exc:  # a report line, never a crash
        return [("plait-ddp", f"torch.distributed unavailable ({exc})")]
