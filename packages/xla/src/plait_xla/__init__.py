"""plait backend ``xla``: torch_xla on TPUs (and XLA's CPU device). Only what differs from core's defaults.

Two ways to run (:mod:`plait_xla.options`):

* **one process per device** (a TPU VM's chips; torchrun with ``PJRT_DEVICE`` set, or ``plait launch
  --backend xla --num-processes N``): core shards the data per process; gradients are averaged with
  XLA's all-reduce before each optimizer step; collectives run on XLA's operations
  (:mod:`plait_xla.collectives`).
* **SPMD** (``spmd: true``, ``--xla-spmd``): one process, a mesh over every device, each batch split along
  the mesh's data axis, parameters replicated (or sharded with FSDPv2); XLA's partitioner does the rest.

The device is ``torch_xla.device()``; batches reach it through ``MpDeviceLoader``
(:mod:`plait_xla.device_loader`); the graph is cut with ``torch_xla.sync()`` at step boundaries only, so that
accumulation compiles no graph per micro-step; bf16 is autocast on the XLA device
(:mod:`plait_xla.stepping`); checkpoints are core's files, written as CPU tensors
(:mod:`plait_xla.checkpoint`).

torch_xla is imported inside hook bodies only; loading this module checks that it is installed (without
importing it) and that it was built for this torch.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait.errors import PluginError
from plait_xla import runtime
from plait_xla.options import XlaOptions

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointWriter
    from plait.collectives import Collectives
    from plait.config import Config
    from plait.precision import Precision
    from plait.process import ProcessEnvironment

NAME = "xla"
__all__ = ["XlaOptions"]

runtime.check_installed()
if (_mismatch := runtime.mismatch()) is not None:
    raise PluginError(f"backend 'xla': {_mismatch}")


def _options(accelerator: Accelerator) -> XlaOptions:
    options: XlaOptions = accelerator.backend_options
    if options.spmd:
        runtime.ensure_spmd()  # options given in code, which the process environment did not see
    return options


# --------------------------------------------------------------------------- environment
@hookimpl
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> XlaOptions | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    return XlaOptions.from_section(options)


@hookimpl
def plait_process_environment(config: Config) -> ProcessEnvironment:
    return runtime.start(config, XlaOptions.from_section(config.section(NAME)).spmd)


@hookimpl
def plait_device(config: Config, environment: ProcessEnvironment) -> torch.device:
    return runtime.device()


@hookimpl
def plait_collectives(config: Config, environment: ProcessEnvironment, device: torch.device) -> Collectives | None:
    if environment.world_size == 1:
        return None  # one process (SPMD included): core's
    from plait_xla.collectives import XlaCollectives

    return XlaCollectives(environment, device, debug=config.debug)


@hookimpl
def plait_distributed_type(accelerator: Accelerator) -> str:
    from plait.process import DistributedType

    return DistributedType.XLA


@hookimpl
def plait_shutdown(accelerator: Accelerator) -> bool:
    import torch.distributed as dist
    import torch_xla

    torch_xla.sync()  # what the last step left pending
    if accelerator.num_processes > 1 and dist.is_initialized():
        dist.destroy_process_group()
    return True


# --------------------------------------------------------------------------- placement, wrapping
@hookimpl
def plait_init_module(accelerator: Accelerator, empty_init: bool | None) -> AbstractContextManager[Any]:
    from plait.initialization import init_module

    _options(accelerator)
    return init_module(accelerator.device if accelerator.device_placement else None, bool(empty_init))


@hookimpl
def plait_place_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    from plait_xla.rebinding import place_model

    _options(accelerator)
    return place_model(accelerator, model)  # under SPMD a tensor without a sharding is replicated on every device


@hookimpl
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module:
    if not _options(accelerator).fsdp:
        return model
    from torch_xla.experimental.spmd_fully_sharded_data_parallel import SpmdFullyShardedDataParallel

    return SpmdFullyShardedDataParallel(model, mesh=runtime.mesh(runtime.FSDP_AXIS))


@hookimpl
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module | None:
    if type(model).__name__ != "SpmdFullyShardedDataParallel":
        return None
    inner: torch.nn.Module = model.module  # type: ignore[assignment]
    return accelerator.unwrap_model(inner, keep_fp32_wrapper=keep_fp32_wrapper)  # type: ignore[no-any-return]


@hookimpl(wrapper=True)
def plait_wrap_optimizer(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> Generator[None, Any, Any]:
    from plait_xla.rebinding import rebind_optimizer

    rebind_optimizer(accelerator, optimizer)
    return (yield)  # core's default wraps it (accumulation; the precision's step)


@hookimpl
def plait_wrap_dataloader(accelerator: Accelerator, dataloader: Any) -> Any:
    from plait.data import ShardLayout
    from plait_xla.device_loader import BatchSharding, XlaDataLoaderShard

    options = _options(accelerator)
    layout = ShardLayout.of(accelerator)  # one process under SPMD: the batch is split over devices instead
    sharding = None
    if options.spmd:
        sharding = BatchSharding(runtime.mesh(runtime.FSDP_AXIS if options.fsdp else runtime.DATA_AXIS))
    return XlaDataLoaderShard(dataloader, accelerator.gradient_state, layout, accelerator.device, sharding)


# --------------------------------------------------------------------------- precision, sync
@hookimpl
def plait_precision(accelerator: Accelerator) -> Precision:
    import torch

    from plait_xla.stepping import XlaPrecision, check_mixed_precision

    check_mixed_precision(accelerator.mixed_precision)
    dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else None
    autocast = accelerator.autocast_handler
    replicas = 1 if accelerator.backend_options.spmd else accelerator.num_processes
    return XlaPrecision(accelerator.device, dtype, replicas, autocast.to_kwargs() if autocast is not None else None)


@hookimpl
def plait_clip_grad_norm(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
) -> torch.Tensor:
    from plait_xla.stepping import clip_grad_norm

    return clip_grad_norm(accelerator.precision, accelerator.prepared.optimizers, list(parameters), max_norm,  # type: ignore[arg-type]
                          norm_type)


# --------------------------------------------------------------------------- state saving
@hookimpl
def plait_get_state_dict(accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any]:
    from plait_xla.checkpoint import state_dict

    return state_dict(accelerator, model, unwrap)


@hookimpl
def plait_save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> bool:
    from plait_xla.checkpoint import save_model

    save_model(accelerator, model, writer, index)
    return True


@hookimpl
def plait_save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> bool:
    from plait_xla.checkpoint import save_optimizer

    save_optimizer(accelerator, optimizer, writer, index)
    return True


# --------------------------------------------------------------------------- cli
@hookimpl
def plait_launch(config: Config, command: Sequence[str]) -> int | None:
    """One process over every device (``spmd``), or one per device through torchrun."""
    if config.backend != NAME:  # the command line asks every installed backend
        return None
    from plait_xla.launching import launch

    return launch(config, command, XlaOptions.from_section(config.section(NAME)).spmd)


@hookimpl
def plait_launch_options() -> Mapping[str, Sequence[click.Option]]:
    from plait_xla.cli import launch_options

    return {NAME: launch_options()}


@hookimpl
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    from plait_xla.cli import ask_questions

    return ask_questions(ask)


@hookimpl
def plait_env_report(config: Config) -> list[tuple[str, str]]:
    # From metadata only: importing torch_xla takes seconds and may start looking for a TPU.
    import os
    from importlib import metadata

    try:
        device = os.environ.get("PJRT_DEVICE", "not set (torch_xla picks TPU when libtpu is installed, else CPU)")
        return [("plait-xla", f"{metadata.version('plait-xla')}, torch_xla {metadata.version('torch_xla')}, "
                              f"PJRT_DEVICE {device}")]
    except Exception as exc:  # a report line, never a crash
        return [("plait-xla", f"torch_xla unavailable ({type(exc).__name__}: {exc})")]
