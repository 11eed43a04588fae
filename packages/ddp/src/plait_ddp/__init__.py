"""plait backend ``ddp``: DistributedDataParallel. Only what differs from core's defaults.

Core already starts the process group (nccl on CUDA, gloo on CPU), shards
dataloaders, and runs collectives; skipping gradient sync during accumulation uses
DDP's own ``model.no_sync()``, which core's sync control calls. This module is the
hook table: it wraps and unwraps models (:mod:`plait_ddp.comm_hooks` for compressed
all-reduces), owns the ``ddp:`` options (:mod:`plait_ddp.options`) and adds its flags
and questions to the command line (:mod:`plait_ddp.cli`). torch and click are
imported inside hook bodies only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait_ddp.options import DDPOptions

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator

NAME = "ddp"
__all__ = ["DDPOptions"]


@hookimpl
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> DDPOptions | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    return DDPOptions.from_section(options)


@hookimpl
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module:
    if evaluation_mode or accelerator.num_processes == 1 or not any(p.requires_grad for p in model.parameters()):
        return model
    from torch.nn.parallel import DistributedDataParallel

    from plait_ddp import comm_hooks

    options: DDPOptions = accelerator.backend_options
    device_ids = [accelerator.device.index] if accelerator.device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids, **options.ddp_kwargs())
    comm_hooks.register(wrapped, options.comm_hook, options.comm_wrapper, options.comm_state_option,
                        accelerator.device.type)
    return wrapped


@hookimpl
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module | None:
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return accelerator.unwrap_model(model.module, keep_fp32_wrapper=keep_fp32_wrapper)  # type: ignore[no-any-return]
    return None


@hookimpl
def plait_env_report() -> list[tuple[str, str]]:
    try:
        import torch.distributed as dist

        backends = [name for name, ok in (("gloo", dist.is_gloo_available()), ("nccl", dist.is_nccl_available())) if ok]
        return [("plait-ddp process-group backends", ", ".join(backends) or "none")]
    except Exception as exc:  # a report line, never a crash
        return [("plait-ddp", f"torch.distributed unavailable ({exc})")]


@hookimpl
def plait_launch_options() -> Mapping[str, Sequence[click.Option]]:
    from plait_ddp.cli import launch_options

    return {NAME: launch_options()}


@hookimpl
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    from plait_ddp.cli import ask_questions

    return ask_questions(ask)
