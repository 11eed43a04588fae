"""Gradient accumulation: which micro-steps synchronise, and the capability that skips synchronisation.

``accumulate`` runs on every micro-step, so its context is a small class, and the question
"does this model's gradient synchronisation need skipping?" is asked once per model
(:meth:`GradientSyncControl.skips_sync`) and remembered: a run of one process pays for nothing.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from plait.training.gradient_state import GradientState


class GradientSyncControl:
    """Skipping gradient synchronisation on the micro-steps that do not step the optimizer.

    The ``plait_sync_control`` hook hands one over per accelerator (Lightning Fabric's
    ``_BackwardSyncControl`` is the model). This default uses a model's own ``no_sync()``
    (DistributedDataParallel's), and a model without one is never synchronised by backward.
    A backend that synchronises some other way overrides both methods.
    """

    def skips_sync(self, model: torch.nn.Module) -> bool:
        """Whether :meth:`no_sync` does anything for ``model``. Asked once per model; ``False`` means
        backward never synchronises its gradients, and accumulation enters no context for it."""
        return callable(getattr(model, "no_sync", None))

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """A context inside which backward does not synchronise ``model``'s gradients."""
        no_sync = getattr(model, "no_sync", None)
        return no_sync() if callable(no_sync) else contextlib.nullcontext()


class Accumulation:
    """The Accelerator's accumulation part: ``accumulate`` and ``no_sync``."""

    def __init__(self, gradient_state: GradientState, control: GradientSyncControl) -> None:
        self.gradient_state = gradient_state
        self.control = control
        #: Per model, whether its synchronisation can be skipped: asked once, then remembered.
        self._skips: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()
        #: The last ``accumulate`` context whose models never need skipping: stateless, so reused.
        self._stateless: Accumulate | None = None

    def __getstate__(self) -> dict[str, Any]:
        # What was asked of each model is asked again after unpickling (a weak mapping does not pickle).
        return {**self.__dict__, "_skips": None, "_stateless": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._skips = weakref.WeakKeyDictionary()

    def skips_sync(self, model: torch.nn.Module) -> bool:
        """:meth:`GradientSyncControl.skips_sync` for ``model``, asked only the first time."""
        known = self._skips.get(model)
        if known is None:
            known = self._skips[model] = bool(self.control.skips_sync(model))
        return known

    def forget(self, model: torch.nn.Module) -> None:
        """Ask again about ``model``: wrapping can change what its synchronisation does (FSDP2 shards in place)."""
        self._skips.pop(model, None)
        self._stateless = None

    def context(self, models: tuple[torch.nn.Module, ...]) -> Accumulate:
        """The context of one micro-step (see ``Accelerator.accumulate``)."""
        context = self._stateless
        if context is not None and context.models == models:
            return context
        context = Accumulate(self, models)
        if context.stateless:
            self._stateless = context
        return context

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """A context in which backward does not synchronise ``model``'s gradients across processes."""
        return self.control.no_sync(model)

    def trigger_sync_in_backward(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        """A context in which backward synchronises ``model``'s gradients even inside ``no_sync`` or
        ``accumulate`` (HF Accelerate's ``trigger_sync_in_backward``): for a DistributedDataParallel
        model, its reducer is told to reduce in the next backward."""
        return _triggered_sync(model)

    def clear(self) -> None:
        """Forget every model (``free_memory``)."""
        self._skips = weakref.WeakKeyDictionary()
        self._stateless = None


class Accumulate:
    """The context ``accumulate`` returns; a class, because it runs on every micro-step.

    When no model needs its synchronisation skipped (one process) the context holds no
    state while entered, and the accumulation part reuses it from step to step.
    """

    __slots__ = ("_control", "_skipping", "_stack", "_state", "models", "stateless")

    def __init__(self, accumulation: Accumulation, models: tuple[torch.nn.Module, ...]) -> None:
        self._state = accumulation.gradient_state
        self._control = accumulation.control
        self.models = models
        self._stack: contextlib.ExitStack | None = None
        # Known now rather than at the first micro-step that skips synchronisation: until then,
        # every step would build a new context.
        # With ``sync_each_batch`` every backward synchronises: nothing is ever skipped.
        skipping = () if self._state.sync_each_batch else models
        self._skipping = tuple(model for model in skipping if accumulation.skips_sync(model))
        self.stateless = not self._skipping

    def __enter__(self) -> None:
        # Decide whether the micro-step about to run synchronises: on every k-th micro-step, and on
        # the dataloader's last batch (which also restarts the count).
        state = self._state
        if state.end_of_dataloader and state.sync_with_dataloader:
            state.step = 0
            state.sync_gradients = True
            return
        step = state.step = state.step + 1
        if step % state.num_steps == 0:
            state.sync_gradients = True
            return
        state.sync_gradients = False
        if self.stateless:
            return
        stack = self._stack = contextlib.ExitStack()
        for model in self._skipping:
            stack.enter_context(self._control.no_sync(model))

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool | None:
        stack = self._stack
        if stack is None:
            return None
        self._stack = None
        return stack.__exit__(kind, error, traceback)


@contextlib.contextmanager
def _triggered_sync(model: torch.nn.Module) -> Iterator[None]:
    ddp: Any = model
    if not hasattr(ddp, "require_backward_grad_sync") or not hasattr(ddp, "reducer"):
        yield  # not DistributedDataParallel: backward synchronises as it always does
        return
    saved = ddp.require_backward_grad_sync, ddp.require_forward_param_sync
    ddp.require_backward_grad_sync = True
    ddp.require_forward_param_sync = True
    ddp.reducer.prepare_for_backward([])
    try:
        yield
    finally:
        ddp.require_backward_grad_sync, ddp.require_forward_param_sync = saved
