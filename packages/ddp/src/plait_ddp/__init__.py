"""plait backend ``ddp``: DistributedDataParallel. Only what differs from core's defaults.

Core already starts the process group (nccl on CUDA, gloo on CPU), shards
dataloaders, and runs collectives; ``no_sync`` comes from DDP's own
``model.no_sync()``, which core's default uses. This module wraps and unwraps
models and owns the ``ddp:`` options. torch is imported inside
hook bodies only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait_ddp.options import COMM_HOOKS, DDPOptions

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


@hookimpl
def plait_launch_options() -> dict[str, list[Any]]:
    import click

    return {
        NAME: [
            click.Option(["--ddp-find-unused-parameters/--no-ddp-find-unused-parameters", "find_unused_parameters"],
                         default=None, help="ddp: allow parameters that get no gradient in a step."),
            click.Option(["--ddp-bucket-cap-mb", "bucket_cap_mb"], type=click.FloatRange(min=0, min_open=True),
                         default=None, help="ddp: gradient bucket size in MB."),
            click.Option(["--ddp-gradient-as-bucket-view/--no-ddp-gradient-as-bucket-view", "gradient_as_bucket_view"],
                         default=None, help="ddp: gradients are views into the buckets (saves memory)."),
            click.Option(["--ddp-static-graph/--no-ddp-static-graph", "static_graph"], default=None,
                         help="ddp: the graph is the same every step."),
            click.Option(["--ddp-broadcast-buffers/--no-ddp-broadcast-buffers", "broadcast_buffers"], default=None,
                         help="ddp: copy rank 0's buffers to every rank before each forward."),
            click.Option(["--ddp-comm-hook", "comm_hook"], type=click.Choice(COMM_HOOKS), default=None,
                         help="ddp: all-reduce gradients compressed to fp16 or bf16."),
        ]
    }


@hookimpl
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    if backend != NAME:
        return None
    section: dict[str, Any] = {}
    if ask("ddp: do some parameters get no gradient in some steps (find_unused_parameters)?", default=False, type=bool):
        section["find_unused_parameters"] = True
    comm_hook = ask("ddp: compress gradients for the all-reduce?", default="no", choices=list(COMM_HOOKS))
    if comm_hook != "no":
        section["comm_hook"] = comm_hook
    return section

