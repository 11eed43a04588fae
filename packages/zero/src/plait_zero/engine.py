"""DeepSpeed's engine behind HF Accelerate's API: joint wrapping, backward and step, clipping, full state dicts.

Imported from hook bodies only (it imports torch and deepspeed). One engine per
Accelerator: ``deepspeed.initialize`` wraps one model with its optimizer and
scheduler; the Accelerator's :class:`ZeroPrecision` then routes ``backward`` to
``engine.backward`` and the prepared optimizer's ``step`` to ``engine.step``.

Gradient accumulation is the Accelerator's: before each backward the engine is
told whether this micro-step is a boundary (``set_gradient_accumulation_boundary``
with ``sync_gradients``), so it reduces, clips and steps exactly when
``sync_gradients`` is True, and divides the loss by the same number of steps.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from plait.errors import ConfigError
from plait.nested import convert_to_fp32
from plait.precision import Precision
from plait.training import (
    AcceleratedOptimizer,
    AcceleratedScheduler,
    GradientSyncControl,
    PreparedObjects,
    patch_forward,
)
from plait_zero.deepspeed_config import build_config
from plait_zero.options import ZeroOptions

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.training import GradientState


def import_deepspeed(device_type: str) -> Any:
    """Import deepspeed with its accelerator matching plait's device (``DS_ACCELERATOR=cpu`` on CPU)."""
    if device_type == "cpu":
        # Without it DeepSpeed picks CUDA whenever a GPU is visible, even when the run is on CPU (cpu=True).
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    found = get_accelerator().device_name()
    if found != device_type:
        raise ConfigError(
            f"DeepSpeed's accelerator is {found!r} but this run's device is {device_type!r}: unset DS_ACCELERATOR "
            f"(now {os.environ.get('DS_ACCELERATOR')!r}) or set it to {device_type!r}, before deepspeed is imported"
        )
    return deepspeed


#: Whether this module started a one-process group for DeepSpeed (and so must destroy it).
_STARTED_GROUP = False


def ensure_comm(deepspeed: Any, device_type: str) -> None:
    """Give DeepSpeed's communication layer the run's process group (before ``zero.Init`` or an engine).

    With several processes core has started the group; with one, DeepSpeed still needs a group (of one).
    """
    global _STARTED_GROUP
    import torch.distributed as dist

    if not dist.is_initialized():
        # An in-process store: no port to pick, and nothing that a launcher's variables could redirect.
        from torch.distributed import HashStore  # type: ignore[attr-defined]  # not in torch's __all__

        dist.init_process_group("gloo" if device_type == "cpu" else "nccl", store=HashStore(), rank=0,
                                world_size=1)
        _STARTED_GROUP = True
        # DeepSpeed's engine asserts that a launcher set LOCAL_RANK; `python train.py` is a group of one.
        os.environ.setdefault("LOCAL_RANK", "0")
    deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False)


def shutdown() -> None:
    """Destroy the one-process group :func:`ensure_comm` started, if any."""
    global _STARTED_GROUP
    if _STARTED_GROUP:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        _STARTED_GROUP = False


class ZeroPrecision(Precision):
    """Backward and step through the engine; DeepSpeed scales fp16 losses and divides by the accumulation steps."""

    handles_accumulation = True

    def __init__(self, device: torch.device, mixed_precision: str, gradient_state: GradientState) -> None:
        super().__init__(device)
        self.mixed_precision = mixed_precision
        self.gradient_state = gradient_state
        self.engine: Any = None

    def autocast(self, **kwargs: Any) -> contextlib.AbstractContextManager[Any]:
        if self.mixed_precision == "no":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, **{"dtype": dtype, **kwargs})

    def wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """The engine's forward under autocast: DeepSpeed casts the model to fp16/bf16, not float inputs."""
        if self.mixed_precision == "no":
            return forward
        import functools

        precision = self

        @functools.wraps(forward)
        def forward_in_mixed_precision(*args: Any, **kwargs: Any) -> Any:
            with precision.autocast():
                outputs = forward(*args, **kwargs)
            return convert_to_fp32(outputs)

        forward_in_mixed_precision.__wrapped__ = forward
        return forward_in_mixed_precision

    def _engine(self) -> Any:
        if self.engine is None:
            raise RuntimeError(
                "backend 'zero' has no DeepSpeed engine yet: pass the model and its optimizer to "
                "accelerator.prepare(...) before calling backward"
            )
        return self.engine

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        engine = self._engine()
        engine.set_gradient_accumulation_boundary(self.gradient_state.sync_gradients)
        engine.backward(loss, **kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        if closure is not None:
            raise ValueError("backend 'zero' cannot step with a closure: DeepSpeed's engine.step() takes none")
        engine = self._engine()
        engine.step()
        return bool(engine.was_step_applied())


class EngineSyncControl(GradientSyncControl):
    """The engine is told at each backward whether it is a boundary (``sync_gradients``): nothing to skip
    for it. (``DeepSpeedEngine.no_sync`` exists but refuses ZeRO stages 2 and 3.)"""

    def __init__(self, precision: Precision) -> None:
        self.precision = precision

    def skips_sync(self, model: torch.nn.Module) -> bool:
        return model is not getattr(self.precision, "engine", None) and super().skips_sync(model)


def partitioned_init(accelerator: Accelerator) -> contextlib.AbstractContextManager[Any]:
    """``deepspeed.zero.Init`` with the run's config: each layer is partitioned as soon as it is built."""
    options: ZeroOptions = accelerator.backend_options
    deepspeed = import_deepspeed(accelerator.device.type)
    ensure_comm(deepspeed, accelerator.device.type)  # zero.Init partitions over the process group
    config = build_config(
        options, micro_batch_size=None, gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
        world_size=accelerator.num_processes, mixed_precision=accelerator.mixed_precision,
        has_optimizer=False, has_scheduler=False,
    )
    # The dtype comes from the config's fp16/bf16 blocks (DeepSpeed 0.19 ignores an explicit dtype=torch.float32
    # on accelerators without fp16 and builds bfloat16 parameters).
    return deepspeed.zero.Init(config_dict_or_path=config)  # type: ignore[no-any-return]


class ZeroOptimizer(AcceleratedOptimizer):
    """The prepared optimizer: ``step`` is ``engine.step`` on synchronising micro-steps; the engine zeroes gradients."""

    def __init__(self, engine: Any, gradient_state: GradientState, precision: ZeroPrecision, clip: float) -> None:
        super().__init__(engine.optimizer, gradient_state, precision)
        self.engine = engine
        #: The configured clipping norm; ``clip_grad_norm_`` overrides it for one step.
        self.base_clip = clip

    def zero_grad(self, set_to_none: bool = True) -> None:
        # engine.step() zeroes the gradients it consumed; between boundaries they must accumulate.
        pass

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        if self.gradient_state.sync_gradients:
            try:
                self.step_was_skipped = not self.precision.optimizer_step(self.optimizer, closure)
            finally:
                set_clip(self.engine, self.base_clip)

    def __repr__(self) -> str:
        return f"ZeroOptimizer({type(self.optimizer).__name__} stage {self.engine.zero_optimization_stage()})"


class EngineScheduler(AcceleratedScheduler):
    """The prepared scheduler when the engine steps it (after each real optimizer step): ``step`` does nothing."""

    def step(self, *args: Any, **kwargs: Any) -> None:
        pass


def _micro_batch_size(dataloaders: Sequence[Any]) -> int | None:
    for loader in dataloaders:
        size = getattr(loader, "per_process_batch_size", None) or getattr(loader, "batch_size", None)
        if size:
            return int(size)
    return None


def prepare_jointly(
    accelerator: Accelerator,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    dataloaders: Sequence[Any],
) -> PreparedObjects | None:
    """``deepspeed.initialize`` on the model, optimizer and scheduler passed to one ``prepare`` call."""
    precision = accelerator.precision
    if not isinstance(precision, ZeroPrecision):
        raise ConfigError("backend 'zero' needs its own precision, but another plugin replaced it (plait_precision)")
    if not models and not optimizers and not schedulers:
        return None
    if len(models) != 1 or len(optimizers) > 1 or len(schedulers) > 1:
        raise ConfigError(
            f"backend 'zero' wraps one model with at most one optimizer and one scheduler in one DeepSpeed engine, "
            f"but prepare() got {len(models)} models, {len(optimizers)} optimizers and {len(schedulers)} schedulers: "
            f"pass the model together with its optimizer (and scheduler) in one prepare() call"
        )
    if precision.engine is not None and models[0] is precision.engine and not optimizers and not schedulers:
        return PreparedObjects([(precision.engine, precision.engine)])  # prepared again: nothing to do
    if precision.engine is not None:
        raise ConfigError(
            "backend 'zero' already prepared a model on this Accelerator (one DeepSpeed engine per Accelerator): "
            "use another Accelerator for a second model"
        )
    model = models[0]
    optimizer = optimizers[0] if optimizers else None
    scheduler = schedulers[0] if schedulers else None
    deepspeed = import_deepspeed(accelerator.device.type)
    ensure_comm(deepspeed, accelerator.device.type)
    options: ZeroOptions = accelerator.backend_options
    config = build_config(
        options,
        micro_batch_size=_micro_batch_size(list(dataloaders) + list(accelerator.prepared.dataloaders)),
        gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
        world_size=accelerator.num_processes,
        mixed_precision=accelerator.mixed_precision,
        has_optimizer=optimizer is not None,
        has_scheduler=scheduler is not None,
    )
    if config["gradient_accumulation_steps"] != accelerator.gradient_accumulation_steps:
        # Only the Accelerator's default of 1 gives way (any other value must match): the JSON's value rules.
        accelerator.gradient_accumulation_steps = int(config["gradient_accumulation_steps"])
    # The engine steps the scheduler after each applied step; through core's wrapper it keeps HF Accelerate's
    # rule (once per process unless batches are split), so a schedule runs as long as under ddp. A scheduler that
    # needs a metric (ReduceLROnPlateau) is stepped by the user, as under every other backend.
    engine_scheduler = None
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if scheduler is not None and accelerator.step_scheduler_with_optimizer and not plateau:
        engine_scheduler = AcceleratedScheduler(
            scheduler, [], accelerator.gradient_state, step_with_optimizer=True,
            split_batches=accelerator.split_batches, num_processes=accelerator.num_processes,
        )
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=engine_scheduler, config=config, dist_init_required=False,
    )
    precision.engine = engine
    if accelerator.mixed_precision != "no":
        patch_forward(engine, precision.wrap_forward)
    pairs: list[tuple[Any, Any]] = [(model, engine)]
    prepared_optimizer = None
    if optimizer is not None:
        prepared_optimizer = ZeroOptimizer(engine, accelerator.gradient_state, precision, config["gradient_clipping"])
        pairs.append((optimizer, prepared_optimizer))
    if scheduler is not None:
        kind = EngineScheduler if engine_scheduler is not None else AcceleratedScheduler
        pairs.append((scheduler, kind(
            scheduler, [prepared_optimizer] if prepared_optimizer is not None else [], accelerator.gradient_state,
            step_with_optimizer=accelerator.step_scheduler_with_optimizer,
            split_batches=accelerator.split_batches, num_processes=accelerator.num_processes,
        )))
    return PreparedObjects(pairs)


def is_engine(model: Any) -> bool:
    """Whether ``model`` is a DeepSpeed engine (without importing deepspeed when nothing imported it)."""
    import sys

    if "deepspeed" not in sys.modules:
        return False
    from deepspeed.runtime.engine import DeepSpeedEngine

    return isinstance(model, DeepSpeedEngine)


# --------------------------------------------------------------------------- clipping
def set_clip(engine: Any, max_norm: float) -> None:
    """The norm the engine's ZeRO optimizer clips at in its next step (0: no clipping)."""
    engine.optimizer.clip_grad = float(max_norm)


def grad_norm(engine: Any) -> torch.Tensor:
    """The global L2 norm of the reduced gradients of the coming step (over every partition, unscaled)."""
    optimizer = engine.optimizer
    if engine.zero_optimization_stage() == 3:
        from deepspeed.runtime.utils import combine_grad_norm_groups

        norm = combine_grad_norm_groups(optimizer._get_norm_groups())
    else:
        norm = optimizer.scaled_global_norm()
    return torch.as_tensor(norm, dtype=torch.float32).detach().cpu() / float(optimizer.loss_scale)


def clip_grad_norm(accelerator: Accelerator, max_norm: float, norm_type: float) -> torch.Tensor:
    """``clip_grad_norm_`` mapped onto the engine: clip at ``max_norm`` in the coming step; return the norm."""
    engine = getattr(accelerator.precision, "engine", None)
    if float(norm_type) != 2.0:
        raise ValueError(
            f"clip_grad_norm_(norm_type={norm_type!r}) is not supported by backend 'zero': DeepSpeed clips the "
            f"L2 norm only; use norm_type=2"
        )
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm_(max_norm={max_norm!r}) is not valid: expected a positive number")
    set_clip(engine, max_norm)
    if not accelerator.sync_gradients:
        # Gradients are reduced (and the norm known) only on synchronising micro-steps.
        return torch.tensor(float("nan"))
    return grad_norm(engine)


# --------------------------------------------------------------------------- full state dicts
def full_state_dict(engine: Any, unwrap: bool) -> dict[str, Any]:
    """The model's complete state dict on every process (ZeRO-3 partitions gathered), as CPU tensors."""
    module = engine.module
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    else:
        state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    return state if unwrap else {f"module.{k}": v for k, v in state.items()}
