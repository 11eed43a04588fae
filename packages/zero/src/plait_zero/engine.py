"""DeepSpeed's engines behind HF Accelerate's API: backward and step, clipping, full state dicts.

Imported from hook bodies only (it imports torch and deepspeed). ``deepspeed.initialize``
wraps each model with its optimizer and scheduler (:mod:`plait_zero.pairing`); the
Accelerator's :class:`ZeroPrecision` keeps every engine, routes ``backward`` to the
engines the loss reaches (:mod:`plait_zero.routing`) and each prepared optimizer's
``step`` to its own ``engine.step``.

Gradient accumulation is the Accelerator's: before each backward every engine is
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
from plait.training import AcceleratedOptimizer, AcceleratedScheduler, GradientSyncControl
from plait_zero.deepspeed_config import build_config
from plait_zero.options import ZeroOptions
from plait_zero.routing import GradientLedger, backward_several

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
    """Backward and step through the engines; DeepSpeed scales fp16 losses and divides by the accumulation steps.

    With one trained engine, ``backward`` is its ``engine.backward``. With several, it is
    :func:`plait_zero.routing.backward_several`: one autograd pass, after which every engine
    whose parameters the loss reached has reduced its gradients.
    """

    handles_accumulation = True

    def __init__(self, device: torch.device, mixed_precision: str, gradient_state: GradientState) -> None:
        super().__init__(device)
        self.mixed_precision = mixed_precision
        self.gradient_state = gradient_state
        #: Every engine of this accelerator, in the order built: trained ones and ZeRO-3 inference ones.
        self.engines: list[Any] = []
        #: The engines built with an optimizer (those ``backward`` reaches).
        self.trained: list[Any] = []
        #: What each trained engine holds since its step (see :class:`plait_zero.routing.GradientLedger`).
        self.ledger = GradientLedger(self.describe)
        #: The accelerator's registry of prepared objects (set at the first ``prepare``), to name models.
        self.prepared: Any = None
        self._owners: dict[int, Any] | None = None
        #: ``id(torch optimizer)`` to the user's optimizer and the prepared :class:`ZeroOptimizer`.
        self._optimizers: dict[int, tuple[Any, Any]] = {}

    @property
    def engine(self) -> Any:
        """The first trained engine, or ``None`` before any."""
        return self.trained[0] if self.trained else None

    def owns(self, model: Any) -> bool:
        """Whether ``model`` is one of this accelerator's engines."""
        return any(model is engine for engine in self.engines)

    def add(self, engine: Any, trained: bool) -> None:
        self.engines.append(engine)
        if trained:
            self.trained.append(engine)
        self._owners = None

    def add_optimizer(self, optimizer: Any, prepared: Any) -> None:
        self._optimizers[id(optimizer)] = (optimizer, prepared)

    def prepared_optimizer(self, optimizer: Any) -> Any:
        """The :class:`ZeroOptimizer` prepared for the user's ``optimizer`` (or that one itself), else ``None``."""
        found = self._optimizers.get(id(optimizer))
        if found is not None and found[0] is optimizer:
            return found[1]
        return optimizer if any(optimizer is p for _, p in self._optimizers.values()) else None

    def forget_unprepared(self, prepared: Any) -> None:
        """Drop the engines the accelerator no longer holds (after ``free_memory``)."""
        self.prepared = prepared
        kept = [engine for engine in self.engines if engine in prepared]
        if len(kept) != len(self.engines):
            self.engines = kept
            self.trained = [engine for engine in self.trained if engine in prepared]
            self.ledger.forget(self.trained)
            self._owners = None
            self._optimizers = {k: v for k, v in self._optimizers.items() if v[1] in prepared}

    def owners(self) -> dict[int, Any]:
        """``id(parameter)`` to the trained engine that holds it."""
        if self._owners is None:
            self._owners = {id(p): engine for engine in self.trained for p in engine.module.parameters()}
        return self._owners

    def describe(self, engine: Any) -> str:
        """``model 1 (Discriminator)``: the engine's place among the prepared models and its module's class."""
        models = list(self.prepared.models) if self.prepared is not None else []
        index = next((i for i, model in enumerate(models) if model is engine), None)
        name = type(engine.module).__qualname__
        return f"model {index} ({name})" if index is not None else f"the {name} model"

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

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        trained = self.trained
        if not trained:
            raise RuntimeError(
                "Call backward after you pass the model and its optimizer to accelerator.prepare(...): backend "
                "'zero' has no DeepSpeed engine to train yet"
            )
        boundary = self.gradient_state.sync_gradients
        for engine in trained:
            engine.set_gradient_accumulation_boundary(boundary)
        if len(trained) == 1:
            self.ledger.reached(trained, boundary)
            trained[0].backward(loss, **kwargs)
        else:
            backward_several(self, loss, boundary, kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        if closure is not None:
            raise ValueError("backend 'zero' cannot step with a closure: DeepSpeed's engine.step() takes none")
        engine = next((e for e in self.trained if e.optimizer is optimizer), None)
        if engine is None:
            raise RuntimeError(
                "Step the optimizer accelerator.prepare(...) returned: this one belongs to no DeepSpeed engine of "
                "this accelerator"
            )
        self.ledger.before_step(engine)
        engine.step()
        self.ledger.stepped(engine)
        return bool(engine.was_step_applied())

    def zero_grad(self, engine: Any) -> None:
        """``optimizer.zero_grad()`` on a synchronising micro-step: discard what ``engine`` holds, where it can."""
        if self.ledger.zero_grad(engine):
            engine.optimizer.zero_grad()


class EngineSyncControl(GradientSyncControl):
    """Each engine is told at each backward whether it is a boundary (``sync_gradients``): nothing to skip
    for it. (``DeepSpeedEngine.no_sync`` exists but refuses ZeRO stages 2 and 3.)"""

    def __init__(self, precision: Precision) -> None:
        self.precision = precision

    def skips_sync(self, model: torch.nn.Module) -> bool:
        owns = getattr(self.precision, "owns", None)
        return not (owns is not None and owns(model)) and super().skips_sync(model)


def partitioned_init(accelerator: Accelerator) -> contextlib.AbstractContextManager[Any]:
    """``deepspeed.zero.Init`` with the run's config: each layer is partitioned as soon as it is built."""
    options: ZeroOptions = accelerator.backend_options.active
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
    """The prepared optimizer: ``step`` is ``engine.step`` on synchronising micro-steps, which zeroes the gradients
    it consumed; ``zero_grad`` discards the gradients the engine holds before that, where DeepSpeed can."""

    precision: ZeroPrecision

    def __init__(self, engine: Any, gradient_state: GradientState, precision: ZeroPrecision, clip: float) -> None:
        super().__init__(engine.optimizer, gradient_state, precision)
        self.engine = engine
        #: The configured clipping norm; ``clip_grad_norm_`` overrides it for one step.
        self.base_clip = clip

    def zero_grad(self, set_to_none: bool = True) -> None:
        # engine.step() zeroes the gradients it consumed; between boundaries they must accumulate. Before a
        # backward (torch's order) the engine discards what it holds where DeepSpeed can (routing.GradientLedger).
        if self.gradient_state.sync_gradients:
            self.precision.zero_grad(self.engine)

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


def clip_grad_norm(accelerator: Accelerator, parameters: Sequence[Any], max_norm: float, norm_type: float) -> torch.Tensor:
    """``clip_grad_norm_`` mapped onto the engine of ``parameters``: clip at ``max_norm`` in its coming step;
    return the norm. With one trained engine, that engine (DeepSpeed clips all its gradients)."""
    if float(norm_type) != 2.0:
        raise ValueError(
            f"clip_grad_norm_(norm_type={norm_type!r}) is not supported by backend 'zero': DeepSpeed clips the "
            f"L2 norm only; use norm_type=2"
        )
    if max_norm <= 0:
        raise ValueError(f"clip_grad_norm_(max_norm={max_norm!r}) is not valid: expected a positive number")
    precision: Any = accelerator.precision
    engine = precision.trained[0] if len(precision.trained) == 1 else engine_of(precision, parameters)
    set_clip(engine, max_norm)
    if not accelerator.sync_gradients:
        # Gradients are reduced (and the norm known) only on synchronising micro-steps.
        return torch.tensor(float("nan"))
    return grad_norm(engine)


def engine_of(precision: ZeroPrecision, parameters: Sequence[Any]) -> Any:
    """The one trained engine that holds every parameter in ``parameters``."""
    owners = precision.owners()
    found = {id(owners[id(p)]): owners[id(p)] for p in parameters if id(p) in owners}
    if len(found) == 1 and all(id(p) in owners for p in parameters):
        return next(iter(found.values()))
    names = [precision.describe(engine) for engine in found.values()]
    where = f"belong to {' and '.join(names)}" if names else "belong to no model this accelerator trains"
    if names and len(names) == 1:
        where = f"are not all {names[0]}'s"
    raise ValueError(
        f"Pass the parameters of one prepared model to clip_grad_norm_ (model.parameters()): backend 'zero' clips "
        f"each DeepSpeed engine's gradients as a whole, and these parameters {where}"
    )


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
