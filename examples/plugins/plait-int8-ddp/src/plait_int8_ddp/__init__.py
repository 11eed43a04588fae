"""plait backend ``int8_ddp``: DistributedDataParallel whose gradient all-reduce travels as 8-bit integers.

A third-party backend written against plait's public API only (:mod:`plait.hookspecs`): this module is its hook
table, and ``pyproject.toml``'s ``plait.backends`` entry point names it. Only the selected backend is loaded,
so everything here is imported at most once per run, and torch and click only inside hook bodies: listing the
plugin (``plait plugins``) costs milliseconds.

Core does the rest, unchanged: it starts the process group from the launcher's variables (gloo on CPU, nccl on
CUDA), shards the dataloaders, runs the collectives, skips gradient sync during accumulation with the model's
own ``no_sync()``, and saves checkpoints of the unwrapped model. This backend differs in two hooks: it wraps
each trained model in DistributedDataParallel with the int8 communication hook
(:mod:`plait_int8_ddp.quantized_allreduce`), and unwraps it again. Its options are in
:mod:`plait_int8_ddp.options`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait_int8_ddp.options import NAME, Int8Options

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator

__all__ = ["NAME", "Int8Options"]


@hookimpl
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> Int8Options | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    return Int8Options.from_section(options)


@hookimpl
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module | None:
    if evaluation_mode or accelerator.num_processes == 1 or not any(p.requires_grad for p in model.parameters()):
        return None  # core's default: the model as it is
    from torch.nn.parallel import DistributedDataParallel

    from plait_int8_ddp.quantized_allreduce import int8_hook

    options: Int8Options = accelerator.backend_options
    device_ids = [accelerator.device.index] if accelerator.device.type == "cuda" else None
    wrapped = DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=options.bucket_cap_mb)
    wrapped.register_comm_hook((None, options.min_elements), int8_hook)
    return wrapped


@hookimpl
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module | None:
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):  # and whatever core unwraps beneath (autocast's forward)
        return accelerator.unwrap_model(model.module, keep_fp32_wrapper=keep_fp32_wrapper)  # type: ignore[no-any-return]
    return None


@hookimpl
def plait_launch_options() -> Mapping[str, Sequence[click.Option]]:
    import click

    return {NAME: [
        click.Option(["--int8-ddp-bucket-cap-mb", "bucket_cap_mb"], type=click.FloatRange(min=0, min_open=True),
                     default=None, help="int8_ddp: gradient bucket size in MB; each bucket has its own scale."),
        click.Option(["--int8-ddp-min-elements", "min_elements"], type=click.IntRange(min=0), default=None,
                     help="int8_ddp: buckets with fewer elements are all-reduced in float32."),
    ]}


@hookimpl
def plait_env_report() -> list[tuple[str, str]]:
    import torch.distributed as dist

    return [("int8_ddp: gloo (CPU)", "available" if dist.is_gloo_available() else "missing")]
