"""Core's default implementation of every hook: the built-in ``single`` backend, and the fallback of all.

Registered first on every plugin manager, so any backend's implementation wins and
these are the fallback. Each default is a line or two: the behaviour lives in the
module named for its concern. Nothing is imported at the top but what listing plugins
needs: ``plait plugins`` imports this module to read its hook names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from plait.errors import ConfigError
from plait.plugins.catalog import BUILTIN_BACKEND
from plait.plugins.markers import hookimpl

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointReader, CheckpointWriter
    from plait.collectives import Collectives
    from plait.config import Config
    from plait.precision import Precision
    from plait.process import ProcessEnvironment
    from plait.training import GradientSyncControl


# --------------------------------------------------------------------------- environment
@hookimpl(trylast=True)
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> object:
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"backend_options={options!r} is a {type(options).__qualname__} object that backend {backend!r} "
            f"does not accept: pass a dict of options, or select the backend that defines it"
        )
    if backend == BUILTIN_BACKEND and options:
        raise ConfigError(
            f"backend {BUILTIN_BACKEND!r} takes no options, but its section sets {', '.join(map(repr, options))}: "
            f"remove the '{BUILTIN_BACKEND}:' section"
        )
    # A third-party backend that does not validate its section gets it as a plain dict.
    return dict(options)


@hookimpl(trylast=True)
def plait_process_environment(config: Config) -> ProcessEnvironment:
    from plait.process import group

    return group.start(config)


@hookimpl(trylast=True)
def plait_device(config: Config, environment: ProcessEnvironment) -> torch.device:
    import os

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
def plait_collectives(config: Config, environment: ProcessEnvironment, device: torch.device) -> Collectives:
    from plait.collectives import Collectives

    if environment.world_size == 1:
        return Collectives(environment, device, debug=config.debug)
    from plait.collectives.torch_distributed import TorchCollectives

    return TorchCollectives(environment, device, debug=config.debug)


@hookimpl(trylast=True)
def plait_distributed_type(accelerator: Accelerator) -> str:
    from plait.process import DistributedType

    if accelerator.num_processes == 1:
        return DistributedType.NO
    return DistributedType.MULTI_GPU if accelerator.device.type == "cuda" else DistributedType.MULTI_CPU


@hookimpl(trylast=True)
def plait_shutdown(accelerator: Accelerator) -> bool:
    from plait.process import group

    group.finish()
    return True


# --------------------------------------------------------------------------- placement
@hookimpl(trylast=True)
def plait_place_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    return model.to(accelerator.device)


@hookimpl(trylast=True)
def plait_batch_placer(accelerator: Accelerator, dataloader: Any) -> Callable[[Any], Any]:
    from plait.data import batch_placer, unplaced

    if not accelerator.device_placement:
        return unplaced
    non_blocking = accelerator.config.non_blocking or bool(getattr(dataloader, "pin_memory", False))
    return batch_placer(accelerator.device, non_blocking=non_blocking)


@hookimpl(trylast=True)
def plait_init_module(accelerator: Accelerator, empty_init: bool | None) -> AbstractContextManager[Any]:
    from plait.initialization import init_module

    return init_module(accelerator.device if accelerator.device_placement else None, bool(empty_init))


# --------------------------------------------------------------------------- wrapping
@hookimpl(trylast=True)
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module:
    # One process: nothing to wrap. (Mixed precision is applied by the accelerator's Precision on top.)
    return model


@hookimpl(trylast=True)
def plait_wrap_optimizer(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> Any:
    from plait.training import AcceleratedOptimizer
    from plait.utils.backend_plugins import refuse_dummy

    refuse_dummy(optimizer, accelerator.backend)
    return AcceleratedOptimizer(optimizer, accelerator.gradient_state, accelerator.precision)


@hookimpl(trylast=True)
def plait_wrap_scheduler(accelerator: Accelerator, scheduler: Any) -> Any:
    from plait.training import AcceleratedScheduler
    from plait.utils.backend_plugins import refuse_dummy

    refuse_dummy(scheduler, accelerator.backend)
    inner = getattr(scheduler, "optimizer", None)
    optimizers = [o for o in accelerator.prepared.optimizers if o is inner or getattr(o, "optimizer", None) is inner]
    return AcceleratedScheduler(
        scheduler,
        optimizers,
        accelerator.gradient_state,
        step_with_optimizer=accelerator.step_scheduler_with_optimizer,
        split_batches=accelerator.split_batches,
        num_processes=accelerator.num_processes,
    )


@hookimpl(trylast=True)
def plait_wrap_dataloader(accelerator: Accelerator, dataloader: Any) -> Any:
    from plait.data import DataLoaderShard, ShardLayout

    layout = ShardLayout.of(accelerator)
    place = accelerator.hooks.batch_placer(accelerator, dataloader)
    return DataLoaderShard(dataloader, accelerator.gradient_state, place, layout)


@hookimpl(trylast=True)
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module:
    return model


# --------------------------------------------------------------------------- precision
@hookimpl(trylast=True)
def plait_precision(accelerator: Accelerator) -> Precision:
    import torch

    from plait.precision import Precision, TorchAmpPrecision

    scaler, autocast = accelerator.scaler_handler, accelerator.autocast_handler
    scaler_kwargs = scaler.to_kwargs() if scaler is not None else None
    autocast_kwargs = autocast.to_kwargs() if autocast is not None else None
    if accelerator.mixed_precision == "fp16":
        return TorchAmpPrecision(accelerator.device, torch.float16, scaler_kwargs, autocast_kwargs)
    if accelerator.mixed_precision == "bf16":
        return TorchAmpPrecision(accelerator.device, torch.bfloat16, None, autocast_kwargs)
    return Precision(accelerator.device)


# --------------------------------------------------------------------------- sync
@hookimpl(trylast=True)
def plait_sync_control(accelerator: Accelerator) -> GradientSyncControl:
    from plait.training import GradientSyncControl

    return GradientSyncControl()


@hookimpl(trylast=True)
def plait_clip_grad_norm(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
) -> torch.Tensor:
    import torch

    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)


@hookimpl(trylast=True)
def plait_clip_grad_value(accelerator: Accelerator, parameters: Iterable[torch.Tensor], clip_value: float) -> bool:
    import torch

    torch.nn.utils.clip_grad_value_(parameters, clip_value)
    return True


# --------------------------------------------------------------------------- state saving
@hookimpl(trylast=True)
def plait_get_state_dict(accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any]:
    if unwrap:
        model = accelerator.unwrap_model(model)
    return model.state_dict()


@hookimpl(trylast=True)
def plait_save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> bool:
    from plait.checkpoint import default_state

    default_state.save_model(accelerator, model, writer, index)
    return True


@hookimpl(trylast=True)
def plait_check_model(accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int,
                      strict: bool) -> bool | None:
    from plait.checkpoint import default_state

    if not default_state.core_checks(accelerator, "model"):
        return None  # a backend loads it its own way and checks nothing: loaded unchecked
    default_state.check_model(accelerator, model, checkpoint, index, strict)
    return True


@hookimpl(trylast=True)
def plait_load_model(accelerator: Accelerator, model: torch.nn.Module, index: int, strict: bool,
                     checkpoint: CheckpointReader) -> bool:
    from plait.checkpoint import default_state

    default_state.load_model(accelerator, model, checkpoint, index, strict)
    return True


@hookimpl(trylast=True)
def plait_save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> bool:
    from plait.checkpoint import default_state

    default_state.save_optimizer(accelerator, optimizer, writer, index)
    return True


@hookimpl(trylast=True)
def plait_check_optimizer(accelerator: Accelerator, optimizer: Any, checkpoint: CheckpointReader, index: int) -> bool | None:
    from plait.checkpoint import default_state

    if not default_state.core_checks(accelerator, "optimizer"):
        return None  # a backend loads it its own way and checks nothing: loaded unchecked
    default_state.check_optimizer(optimizer, checkpoint, index)
    return True


@hookimpl(trylast=True)
def plait_load_optimizer(optimizer: Any, index: int, checkpoint: CheckpointReader) -> bool:
    from plait.checkpoint import default_state

    default_state.load_optimizer(optimizer, checkpoint, index)
    return True


# --------------------------------------------------------------------------- cli
@hookimpl(trylast=True)
def plait_env_report(config: Config) -> list[tuple[str, str]]:
    import platform
    from importlib import metadata

    lines = [("Python", platform.python_version()), ("Platform", platform.platform())]
    for dist in ("plait", "torch", "pluggy", "safetensors", "numpy"):
        try:
            lines.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            lines.append((dist, "not installed"))
    try:
        import torch

        cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
        lines.append(("CUDA", str(cuda)))
        if torch.cuda.is_available():
            lines.append(("GPUs", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))))
            lines.append(("NCCL", ".".join(map(str, torch.cuda.nccl.version()))))
    except Exception as exc:  # a report line, never a crash
        lines.append(("torch devices", f"unavailable ({exc})"))
    return lines


