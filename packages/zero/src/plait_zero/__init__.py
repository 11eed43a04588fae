"""plait backend ``zero``: DeepSpeed ZeRO stages 1-3 with CPU/NVMe offload, through DeepSpeed's own engine.

``accelerator.prepare(model, optimizer, scheduler, dataloader)`` hands the model,
optimizer and scheduler to ``deepspeed.initialize`` together (core's
``plait_prepare_jointly``); ``backward`` and the optimizer's ``step`` become
``engine.backward`` and ``engine.step``. Several models (a GAN's two, a student and
its teacher) each get their own engine, from one ``prepare`` call or several, and
``backward`` reaches every engine the loss reaches. Core still starts the process
group, shards dataloaders and runs collectives.

This module is the hook table: the engines and their precision are in
:mod:`plait_zero.engine`, pairing models with optimizers in :mod:`plait_zero.pairing`,
backward over several engines in :mod:`plait_zero.routing`, the DeepSpeed config in
:mod:`plait_zero.deepspeed_config` (HF Accelerate's ``DummyOptim``/``DummyScheduler``, which DeepSpeed builds
from its ``"optimizer"``/``"scheduler"`` blocks, in :mod:`plait_zero.dummies`),
checkpoints in :mod:`plait_zero.checkpoint`, the ``zero:`` options in
:mod:`plait_zero.options` and the command line's flags and questions in
:mod:`plait_zero.cli`. Only this module and the options are imported to list the
plugin: torch, deepspeed and click are imported inside hook bodies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from plait import hookimpl
from plait_zero.options import ZeroOptions

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointReader, CheckpointWriter
    from plait.precision import Precision
    from plait.training import GradientSyncControl, PreparedObjects

NAME = "zero"
__all__ = ["ZeroOptions", "zero3_init"]


def zero3_init(accelerator: Accelerator, enabled: bool | None = None) -> AbstractContextManager[Any]:
    """A context in which models are built already partitioned (``deepspeed.zero.Init``), for stage 3.

    Active when the ``zero3_init`` option is true (or ``enabled``) and the stage is 3; a
    ``nullcontext`` otherwise. Models built inside are prepared as usual::

        with plait_zero.zero3_init(accelerator):   # or, backend-neutral: accelerator.init_module()
            model = MyModel()
    """
    options = accelerator.backend_options
    if not isinstance(options, ZeroOptions):
        return contextlib.nullcontext()
    options = options.active  # the selected entry of plugins, if any
    if not (options.zero3_init if enabled is None else enabled) or options.effective_stage != 3:
        return contextlib.nullcontext()
    from plait_zero.engine import partitioned_init

    return partitioned_init(accelerator)


def _engine(accelerator: Accelerator, model: Any) -> Any:
    """``model`` when it is one of this accelerator's DeepSpeed engines, else ``None``."""
    owns = getattr(accelerator.precision, "owns", None)
    return model if owns is not None and owns(model) else None


def _trains(accelerator: Accelerator, engine: Any = None) -> bool:
    """Whether this accelerator has an engine with an optimizer (``engine``, when given)."""
    trained = getattr(accelerator.precision, "trained", None) or []
    return bool(trained) if engine is None else any(engine is e for e in trained)


# --------------------------------------------------------------------------- environment, precision
@hookimpl
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> ZeroOptions | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    return ZeroOptions.from_section(options)


@hookimpl
def plait_distributed_type(accelerator: Accelerator) -> str:
    from plait.process import DistributedType

    return DistributedType.DEEPSPEED


@hookimpl
def plait_precision(accelerator: Accelerator) -> Precision:
    from plait_zero.engine import ZeroPrecision

    return ZeroPrecision(accelerator.device, accelerator.mixed_precision, accelerator.gradient_state)


@hookimpl(wrapper=True)
def plait_shutdown(accelerator: Accelerator) -> Generator[None, Any, Any]:
    import sys

    if "plait_zero.engine" in sys.modules:  # the one-process group DeepSpeed was given, if any
        sys.modules["plait_zero.engine"].shutdown()
    return (yield)  # core's default tears down the group it started


# --------------------------------------------------------------------------- wrapping
#: Whether this process has already asked if DeepSpeed must compile its CPU op.
_CPU_OP_CHECKED = False


def _announce_cpu_op_build(accelerator: Accelerator) -> None:
    """Say once, on each machine's main process, that DeepSpeed is about to compile its CPU op, instead of a silent
    minute or more: on CPU its communication layer builds the shared-memory collectives (``deepspeed_shm_comm``)
    with the system C++ compiler the first time, into torch's extensions cache (``TORCH_EXTENSIONS_DIR``, else
    ``~/.cache/torch_extensions``), and loads them from there afterwards. Nothing is said when DeepSpeed was
    installed with the op built in, when the cache already has it, or off the CPU."""
    global _CPU_OP_CHECKED
    if _CPU_OP_CHECKED or accelerator.device.type != "cpu":
        return
    _CPU_OP_CHECKED = True
    import os
    import sys

    from plait_zero.engine import import_deepspeed

    deepspeed = import_deepspeed("cpu")
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops
    from torch.utils.cpp_extension import _get_build_directory  # the folder torch's load() builds into and reads

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME) or installed_ops.get(builder.NAME):
        return  # DeepSpeed falls back to torch's collectives, or has the op already
    folder = _get_build_directory(builder.name, verbose=False)
    if os.path.isfile(os.path.join(folder, f"{builder.name}.so")) or not accelerator.is_local_main_process:
        return
    print(f"plait zero: DeepSpeed is compiling its CPU op {builder.name} with the C++ compiler, once; it can take "
          f"minutes (cached in {folder})", file=sys.stderr, flush=True)


@hookimpl
def plait_init_module(accelerator: Accelerator, empty_init: bool | None) -> AbstractContextManager[Any] | None:
    options: ZeroOptions = accelerator.backend_options.active
    if not options.zero3_init or options.effective_stage != 3:
        return None  # core's default: built on the device
    from plait_zero.engine import partitioned_init

    _announce_cpu_op_build(accelerator)
    return partitioned_init(accelerator)


@hookimpl
def plait_prepare_jointly(
    accelerator: Accelerator,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    dataloaders: Sequence[Any],
) -> PreparedObjects | None:
    from plait_zero.pairing import prepare_jointly

    if models:  # DeepSpeed's engines start its communication layer
        _announce_cpu_op_build(accelerator)
    return prepare_jointly(accelerator, models, optimizers, schedulers, dataloaders)


@hookimpl
def plait_wrap_model(accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module | None:
    if evaluation_mode:
        return None
    from plait.errors import ConfigError

    raise ConfigError(
        "Call accelerator.prepare(model, optimizer, ...) instead of prepare_model (or prepare_model(model, "
        "evaluation_mode=True) for inference only): backend 'zero' wraps a model together with its optimizer "
        "(deepspeed.initialize)"
    )


@hookimpl
def plait_wrap_optimizer(accelerator: Accelerator, optimizer: Any) -> Any | None:
    from plait.errors import ConfigError

    raise ConfigError(
        "Pass the optimizer with its model to one accelerator.prepare(model, optimizer, ...) call: backend 'zero' "
        "wraps an optimizer together with its model (deepspeed.initialize)"
    )


@hookimpl
def plait_unwrap_model(accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module | None:
    if _engine(accelerator, model) is None:
        from plait_zero.engine import is_engine

        if not is_engine(model):
            return None
    inner: Any = model.module
    return accelerator.unwrap_model(inner, keep_fp32_wrapper=keep_fp32_wrapper)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- sync
@hookimpl
def plait_sync_control(accelerator: Accelerator) -> GradientSyncControl:
    from plait_zero.engine import EngineSyncControl

    return EngineSyncControl(accelerator.precision)


@hookimpl
def plait_clip_grad_norm(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
) -> torch.Tensor | None:
    if not _trains(accelerator):
        return None
    from plait_zero.engine import clip_grad_norm

    return clip_grad_norm(accelerator, list(parameters), max_norm, norm_type)


@hookimpl
def plait_clip_grad_value(accelerator: Accelerator, parameters: Iterable[torch.Tensor], clip_value: float) -> bool | None:
    if not _trains(accelerator):
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
    from plait_zero import checkpoint

    if _trains(accelerator, engine):
        checkpoint.save(accelerator, engine, writer, index)
    else:  # an inference engine (ZeRO-3, no optimizer): its gathered weights, in core's format
        checkpoint.save_inference(accelerator, engine, writer, index)
    return True


@hookimpl
def plait_check_model(
    accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int, strict: bool
) -> bool | None:
    engine = _engine(accelerator, model)
    if engine is None:
        return None
    from plait_zero import checkpoint as state

    if _trains(accelerator, engine):
        state.check(accelerator, engine, checkpoint, index, strict)
    else:
        state.check_inference(engine, checkpoint, index, strict)
    return True


@hookimpl
def plait_load_model(
    accelerator: Accelerator, model: torch.nn.Module, index: int, strict: bool, checkpoint: CheckpointReader
) -> bool | None:
    engine = _engine(accelerator, model)
    if engine is None:
        return None
    from plait_zero import checkpoint as state

    if _trains(accelerator, engine):
        state.load(accelerator, engine, checkpoint, index, strict)
    else:
        state.load_inference(accelerator, engine, checkpoint, index, strict)
    return True


def _is_zero_optimizer(accelerator: Accelerator, optimizer: Any) -> bool:
    engine = getattr(optimizer, "engine", None)
    return engine is not None and _engine(accelerator, engine) is not None


@hookimpl
def plait_save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> bool | None:
    # The engine's checkpoint (written with the model) holds every process's optimizer partition.
    return True if _is_zero_optimizer(accelerator, optimizer) else None


@hookimpl
def plait_check_optimizer(accelerator: Accelerator, optimizer: Any, checkpoint: CheckpointReader, index: int) -> bool | None:
    if not _is_zero_optimizer(accelerator, optimizer):
        return None
    from plait_zero import checkpoint as state

    engine = optimizer.engine
    model_index = next((i for i, model in enumerate(accelerator.prepared.models) if model is engine), None)
    if model_index is None or model_index not in checkpoint.metadata.get("saved_models", [model_index]):
        return True  # its model was kept out of the checkpoint (a save pre-hook): neither is loaded
    state.check_optimizer(accelerator, engine, checkpoint, model_index)
    return True


@hookimpl
def plait_load_optimizer(accelerator: Accelerator, optimizer: Any) -> bool | None:
    # Loaded with its engine's model (plait_load_model): the engine's checkpoint holds both.
    return True if _is_zero_optimizer(accelerator, optimizer) else None


# --------------------------------------------------------------------------- cli
@hookimpl
def plait_launch_options() -> Mapping[str, Sequence[click.Option]]:
    from plait_zero.cli import launch_options

    return {NAME: launch_options()}


@hookimpl
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    if backend != NAME:  # the command line asks every installed backend
        return None
    from plait_zero.cli import ask_questions

    return ask_questions(ask)


@hookimpl
def plait_env_report() -> list[tuple[str, str]]:
    from importlib import metadata

    try:
        version = metadata.version("deepspeed")
    except metadata.PackageNotFoundError:
        from plait.plugins.install_commands import install_hint

        version = f"not installed ({install_hint(NAME)})"
    return [("deepspeed", version)]
