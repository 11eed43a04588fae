"""plait backend ``fsdp``: PyTorch FSDP2 (``fully_shard``). Only what differs from core's defaults.

Core starts the process group (nccl on CUDA, gloo on CPU), shards dataloaders, runs
collectives and precision. This module is the hook table: it shards models and re-binds
optimizers built before ``prepare`` (:mod:`plait_fsdp.wrapping`), skips gradient sync
during accumulation and clips by the global norm over shards
(:mod:`plait_fsdp.gradient_sync`), saves and loads sharded state
(:mod:`plait_fsdp.checkpoint`), owns the ``fsdp:`` options (:mod:`plait_fsdp.options`)
and adds flags, questions and ``plait fsdp merge-weights`` to the command line
(:mod:`plait_fsdp.cli`). With one process the model is not wrapped (there is nothing to
shard over) and checkpoints are still written in the sharded format.

torch and click are imported inside hook bodies only: listing plugins must stay fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait_fsdp.options import FSDPOptions

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointReader, CheckpointWriter
    from plait.config import Config
    from plait.precision import Precision
    from plait.training import GradientSyncControl

NAME = "fsdp"
__all__ = ["FSDPOptions", "meta_device_unless_main"]


def _meta_unless_main(accelerator: Accelerator) -> AbstractContextManager[Any] | None:
    options = accelerator.backend_options
    if (isinstance(options, FSDPOptions) and options.cpu_ram_efficient_loading and accelerator.num_processes > 1
            and not accelerator.is_main_process):
        import torch

        return torch.device("meta")
    return None


def meta_device_unless_main(accelerator: Accelerator) -> AbstractContextManager[Any]:
    """Build the model inside this context: on the main process for real, elsewhere on the meta device
    (no memory), when ``cpu_ram_efficient_loading`` is on; ``prepare`` then broadcasts the main
    process's weights. A no-op otherwise. ``accelerator.init_module()`` does the same under this backend."""
    return _meta_unless_main(accelerator) or contextlib.nullcontext()


# --------------------------------------------------------------------------- environment, placement, wrapping
@hookimpl
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> FSDPOptions | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    return FSDPOptions.from_section(options)


@hookimpl
def plait_distributed_type(accelerator: Accelerator) -> str:
    from plait.process import DistributedType

    return DistributedType.FSDP  # HF Accelerate's, whatever the device: scripts test for it


@hookimpl
def plait_place_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    if accelerator.num_processes == 1:
        return None
    options: FSDPOptions = accelerator.backend_options
    if options.cpu_ram_efficient_loading or options.offload_params or any(p.is_meta for p in model.parameters()):
        # Sharding moves each process's shard where it belongs; the full model never goes to the device
        # (and meta weights cannot: sharding reports them on every process).
        return model
    return None


@hookimpl
def plait_init_module(accelerator: Accelerator, empty_init: bool | None) -> AbstractContextManager[Any] | None:
    return _meta_unless_main(accelerator)  # elsewhere core's default: built on the device


@hookimpl
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module:
    from plait_fsdp.wrapping import is_sharded

    if accelerator.num_processes == 1 or is_sharded(model):
        return model
    from plait_fsdp.wrapping import shard_model

    return shard_model(accelerator, model, accelerator.backend_options)


@hookimpl(wrapper=True)
def plait_wrap_optimizer(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> Generator[None, Any, Any]:
    from plait_fsdp.wrapping import rebind_optimizer

    rebind_optimizer(accelerator, optimizer)
    return (yield)  # core's default wraps it (accumulation, precision)


@hookimpl
def plait_precision(accelerator: Accelerator) -> Precision | None:
    if accelerator.mixed_precision != "fp16" or accelerator.num_processes == 1:
        return None
    import torch
    from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

    from plait.precision import TorchAmpPrecision

    # Each process sees only its shards of the gradients: an inf in one shard must skip the step
    # everywhere, so the scaler all-reduces what it found (torch's GradScaler would not).
    scaler, autocast = accelerator.scaler_handler, accelerator.autocast_handler
    precision = TorchAmpPrecision(accelerator.device, torch.float16, None,
                                  autocast.to_kwargs() if autocast is not None else None)
    precision.scaler = ShardedGradScaler(accelerator.device.type, **(scaler.to_kwargs() if scaler is not None else {}))
    return precision


# --------------------------------------------------------------------------- sync
@hookimpl
def plait_sync_control(accelerator: Accelerator) -> GradientSyncControl:
    from plait_fsdp.gradient_sync import FSDPSyncControl

    return FSDPSyncControl()


@hookimpl
def plait_clip_grad_norm(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
) -> torch.Tensor | None:
    if accelerator.num_processes == 1:
        return None
    from plait_fsdp.gradient_sync import clip_grad_norm

    return clip_grad_norm(parameters, max_norm, norm_type)


# --------------------------------------------------------------------------- state saving
@hookimpl
def plait_save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> bool:
    from plait_fsdp import checkpoint

    checkpoint.save_model(accelerator, model, writer, index, accelerator.backend_options.sharded_state)
    return True


@hookimpl
def plait_check_model(
    accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int, strict: bool
) -> bool:
    from plait_fsdp import checkpoint as state

    state.check_model(model, checkpoint, index, strict)
    return True


@hookimpl
def plait_load_model(
    accelerator: Accelerator, model: torch.nn.Module, index: int, strict: bool, checkpoint: CheckpointReader
) -> bool:
    from plait_fsdp import checkpoint as state

    state.load_model(accelerator, model, checkpoint, index, strict)
    return True


@hookimpl
def plait_save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> bool:
    from plait_fsdp import checkpoint

    model = checkpoint.model_of(accelerator, optimizer)
    checkpoint.save_optimizer(accelerator, model, optimizer, writer, index, accelerator.backend_options.sharded_state)
    return True


@hookimpl
def plait_check_optimizer(accelerator: Accelerator, optimizer: Any, checkpoint: CheckpointReader, index: int) -> bool:
    from plait_fsdp import checkpoint as state

    state.check_optimizer(accelerator, optimizer, checkpoint, index)
    return True


@hookimpl
def plait_load_optimizer(accelerator: Accelerator, optimizer: Any, index: int, checkpoint: CheckpointReader) -> bool:
    from plait_fsdp import checkpoint as state

    state.load_optimizer(accelerator, state.model_of(accelerator, optimizer), optimizer, checkpoint, index)
    return True


@hookimpl
def plait_get_state_dict(accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any] | None:
    """Consolidated weights on the main process; the other processes take part and get ``{}``."""
    from plait_fsdp.checkpoint import full_state_dict
    from plait_fsdp.wrapping import is_sharded

    return full_state_dict(model) if is_sharded(model) else None


# --------------------------------------------------------------------------- cli
@hookimpl
def plait_cli_commands(cli: click.Group) -> None:
    from plait_fsdp.cli import fsdp_group

    cli.add_command(fsdp_group())


@hookimpl
def plait_launch_options() -> Mapping[str, Sequence[click.Option]]:
    from plait_fsdp.cli import launch_options

    return {NAME: launch_options()}


@hookimpl
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    from plait_fsdp.cli import ask_questions

    return ask_questions(ask)


@hookimpl
def plait_env_report(config: Config) -> list[tuple[str, str]]:
    # From metadata only: importing torch.distributed.fsdp would add half a second to `plait env`.
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
        major, minor = (int(part) for part in torch_version.split(".")[:2])
        fsdp2 = "available" if (major, minor) >= (2, 6) else f"needs torch >= 2.6 (found {torch_version})"
        return [("plait-fsdp", f"{metadata.version('plait-fsdp')}, FSDP2 fully_shard {fsdp2}")]
    except Exception as exc:  # a report line, never a crash
        return [("plait-fsdp", f"FSDP2 unavailable ({type(exc).__name__}: {exc})")]
