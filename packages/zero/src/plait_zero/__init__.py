"""plait backend ``zero``: DeepSpeed ZeRO stages 1-3 with CPU/NVMe offload, through DeepSpeed's own engine.

``accelerator.prepare(model, optimizer, scheduler, dataloader)`` hands the model,
optimizer and scheduler to ``deepspeed.initialize`` together (core's
``plait_prepare_jointly``); ``backward`` and the optimizer's ``step`` become
``engine.backward`` and ``engine.step``. Core still starts the process group,
shards dataloaders and runs collectives. Only this module is imported to list
the plugin: torch and deepspeed are imported inside hook bodies (the
:mod:`plait_zero.engine` and :mod:`plait_zero.checkpointing` submodules).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait_zero.options import OFFLOAD_DEVICES, ZeroOptions

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointWriter
    from plait.precision import Precision
    from plait.wrapping import PreparedObjects

NAME = "zero"
__all__ = ["ZeroOptions", "zero3_init"]


def zero3_init(accelerator: Accelerator, enabled: bool | None = None) -> AbstractContextManager[Any]:
    """A context in which models are built already partitioned (``deepspeed.zero.Init``), for stage 3.

    Active when the ``zero3_init`` option is true (or ``enabled``) and the stage is 3; a
    ``nullcontext`` otherwise. Models built inside are prepared as usual::

        with plait_zero.zero3_init(accelerator):
            model = MyModel()
    """
    if accelerator.backend != NAME:
        return contextlib.nullcontext()
    options: ZeroOptions = accelerator.backend_options
    if not (options.zero3_init if enabled is None else enabled) or options.effective_stage != 3:
        return contextlib.nullcontext()
    from plait_zero.ds_config import build_config
    from plait_zero.engine import ensure_comm, import_deepspeed

    deepspeed = import_deepspeed(accelerator.device.type)
    ensure_comm(deepspeed, accelerator.device.type)  # zero.Init partitions over the process group
    config = build_config(
        options, micro_batch_size=None, gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
        world_size=accelerator.num_processes, mixed_precision=accelerator.mixed_precision,
        has_optimizer=False, has_scheduler=False,
    )
    # The dtype comes from the config's fp16/bf16 blocks (DeepSpeed 0.19 ignores an explicit dtype=torch.float32
    # on accelerators without fp16 and builds bfloat16 parameters).
    return deepspeed.zero.Init(config_dict_or_path=config)


def _engine(accelerator: Accelerator, model: Any) -> Any:
    """``model`` when it is this accelerator's DeepSpeed engine, else ``None``."""
    if accelerator.backend != NAME:
        return None
    engine = getattr(accelerator.precision, "engine", None)
    return engine if engine is not None and model is engine else None


# --------------------------------------------------------------------------- environment, precision
@hookimpl
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> ZeroOptions | None:
    if backend != NAME:
        return None
    return ZeroOptions.from_section(options)


@hookimpl
def plait_distributed_type(accelerator: Accelerator) -> str | None:
    if accelerator.backend != NAME:
        return None
    from plait.environment import DistributedType

    return DistributedType.DEEPSPEED


@hookimpl
def plait_precision(accelerator: Accelerator) -> Precision | None:
    if accelerator.backend != NAME:
        return None
    from plait_zero.engine import ZeroPrecision

    return ZeroPrecision(accelerator.device, accelerator.mixed_precision, accelerator.gradient_state)


@hookimpl
def plait_shutdown(accelerator: Accelerator) -> bool | None:
    import sys

    if accelerator.backend == NAME and "plait_zero.engine" in sys.modules:
        sys.modules["plait_zero.engine"].shutdown()
    return None  # core's default tears down the group it started


# --------------------------------------------------------------------------- wrapping
@hookimpl
def plait_prepare_jointly(
    accelerator: Accelerator,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    dataloaders: Sequence[Any],
) -> PreparedObjects | None:
    if accelerator.backend != NAME:
        return None
    from plait_zero.engine import prepare_jointly

    return prepare_jointly(accelerator, models, optimizers, schedulers, dataloaders)


@hookimpl
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module | None:
    if accelerator.backend != NAME or evaluation_mode:
        return None
    from plait.errors import ConfigError

    raise ConfigError(
        "backend 'zero' wraps a model together with its optimizer (deepspeed.initialize): call "
        "accelerator.prepare(model, optimizer, ...) instead of prepare_model (or prepare_model(model, "
        "evaluation_mode=True) for inference only)"
    )


@hookimpl
def plait_wrap_optimizer(accelerator: Accelerator, optimizer: Any) -> Any | None:
    if accelerator.backend != NAME:
        return None
    from plait.errors import ConfigError

    raise ConfigError(
        "backend 'zero' wraps an optimizer together with its model (deepspeed.initialize): pass both to one "
        "accelerator.prepare(model, optimizer, ...) call"
    )


@hookimpl
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module | None:
    if _engine(accelerator, model) is None:
        from plait_zero.engine import is_engine

        if accelerator.backend != NAME or not is_engine(model):
            return None
    inner: Any = model.module
    return accelerator.unwrap_model(inner, keep_fp32_wrapper=keep_fp32_wrapper)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- sync
@hookimpl
def plait_no_sync(accelerator: Accelerator, model: torch.nn.Module) -> AbstractContextManager[Any] | None:
    # The engine is told at each backward whether it is a boundary (sync_gradients): nothing to skip here.
    # (DeepSpeedEngine.no_sync exists but refuses ZeRO stages 2 and 3.)
    return contextlib.nullcontext() if _engine(accelerator, model) is not None else None


@hookimpl
def plait_clip_grad_norm(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
) -> torch.Tensor | None:
    if accelerator.backend != NAME or getattr(accelerator.precision, "engine", None) is None:
        return None
    from plait_zero.engine import clip_grad_norm

    return clip_grad_norm(accelerator, max_norm, norm_type)


@hookimpl
def plait_clip_grad_value(accelerator: Accelerator, parameters: Iterable[torch.Tensor], clip_value: float) -> bool | None:
    if accelerator.backend != NAME or getattr(accelerator.precision, "engine", None) is None:
        return None
    raise NotImplementedError(
        f"clip_grad_value_({clip_value!r}) is not supported by backend 'zero': DeepSpeed clips the gradient norm "
        f"only; use accelerator.clip_grad_norm_(parameters, max_norm) or the zero option gradient_clipping"
    )


# --------------------------------------------------------------------------- state saving
@hookimpl
def plait_get_state_dict(accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any] | None:
    engine = _engine(accelerator, model)
    if engine is None:
        return None
    from plait_zero.engine import full_state_dict

    return full_state_dict(engine, unwrap)


@hookimpl
def plait_save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> bool | None:
    engine = _engine(accelerator, model)
    if engine is None:
        return None
    from plait_zero import checkpointing

    checkpointing.save(accelerator, engine, writer, index)
    return True


@hookimpl
def plait_load_model(accelerator: Accelerator, model: torch.nn.Module, directory: str, index: int, strict: bool) -> bool | None:
    engine = _engine(accelerator, model)
    if engine is None:
        return None
    from plait_zero import checkpointing

    checkpointing.load(accelerator, engine, directory, index, strict)
    return True


def _is_zero_optimizer(accelerator: Accelerator, optimizer: Any) -> bool:
    engine = getattr(accelerator.precision, "engine", None)
    return accelerator.backend == NAME and engine is not None and getattr(optimizer, "engine", None) is engine


@hookimpl
def plait_save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> bool | None:
    # The engine's checkpoint (written with the model) holds every process's optimizer partition.
    return True if _is_zero_optimizer(accelerator, optimizer) else None


@hookimpl
def plait_load_optimizer(accelerator: Accelerator, optimizer: Any, directory: str, index: int) -> bool | None:
    return True if _is_zero_optimizer(accelerator, optimizer) else None


# --------------------------------------------------------------------------- cli
@hookimpl
def plait_launch_options() -> Mapping[str, Sequence[click.Option]]:
    import click

    devices = click.Choice(OFFLOAD_DEVICES, case_sensitive=False)
    return {
        NAME: [
            click.Option(["--zero-stage", "stage"], type=click.IntRange(1, 3), default=None,
                         help="ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also parameters."),
            click.Option(["--zero-offload-optimizer-device", "offload_optimizer_device"], type=devices, default=None,
                         help="Where optimizer states live: none, cpu or nvme."),
            click.Option(["--zero-offload-param-device", "offload_param_device"], type=devices, default=None,
                         help="Where parameters rest (stage 3): none, cpu or nvme."),
            click.Option(["--zero-offload-optimizer-nvme-path", "offload_optimizer_nvme_path"], default=None,
                         help="NVMe directory for offloaded optimizer states."),
            click.Option(["--zero-offload-param-nvme-path", "offload_param_nvme_path"], default=None,
                         help="NVMe directory for offloaded parameters."),
            click.Option(["--zero-gradient-clipping", "gradient_clipping"], type=click.FloatRange(min=0), default=None,
                         help="Clip the gradient norm at this value (0: no clipping, the default)."),
            click.Option(["--zero3-init/--no-zero3-init", "zero3_init"], default=None,
                         help="Build models partitioned under deepspeed.zero.Init (stage 3)."),
            click.Option(["--zero3-save-16bit-model/--no-zero3-save-16bit-model", "save_16bit_model"], default=None,
                         help="Gather 16-bit weights when saving a stage-3 model."),
            click.Option(["--zero-config-file", "config_file"], default=None,
                         help="A DeepSpeed JSON config; its \"auto\" values are filled by plait."),
        ]
    }


@hookimpl
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    if backend != NAME:
        return None
    section: dict[str, Any] = {}
    config_file = ask("DeepSpeed JSON config file (empty for none)", default="")
    if config_file:
        section["config_file"] = config_file
    section["stage"] = int(ask("ZeRO stage (1: optimizer states, 2: +gradients, 3: +parameters)", default="2",
                               choices=["1", "2", "3"]))
    section["offload_optimizer_device"] = ask("Offload optimizer states to", default="none", choices=list(OFFLOAD_DEVICES))
    if section["offload_optimizer_device"] == "nvme":
        section["offload_optimizer_nvme_path"] = ask("NVMe directory for optimizer states", default="/nvme")
    if section["stage"] == 3:
        section["offload_param_device"] = ask("Offload parameters to", default="none", choices=list(OFFLOAD_DEVICES))
        if section["offload_param_device"] == "nvme":
            section["offload_param_nvme_path"] = ask("NVMe directory for parameters", default="/nvme")
        section["zero3_init"] = ask("Build models partitioned (deepspeed.zero.Init)? [yes/no]", default="no",
                                    choices=["yes", "no"]) == "yes"
        section["save_16bit_model"] = ask("Gather 16-bit weights when saving the model? [yes/no]", default="no",
                                          choices=["yes", "no"]) == "yes"
    clip = float(ask("Clip the gradient norm at (0: no clipping)", default="0", type=float))
    if clip > 0:
        section["gradient_clipping"] = clip
    ZeroOptions.from_section(section)  # the answers must make valid options
    return section


@hookimpl
def plait_env_report() -> list[tuple[str, str]]:
    from importlib import metadata

    try:
        version = metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        version = "not installed (pip install plait[zero])"
    return [("deepspeed", version)]
