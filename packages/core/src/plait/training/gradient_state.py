"""Gradient-accumulation state shared by an accelerator and the objects it prepared."""

from __future__ import annotations

from typing import Any


class GradientState:
    """Whether this micro-step synchronises gradients and steps, and where the active dataloader is.

    One per :class:`~plait.Accelerator` (never global): prepared optimizers,
    schedulers and dataloaders hold a reference to their accelerator's state.
    """

    __slots__ = ("active_dataloaders", "end_of_dataloader", "num_steps", "plugin_kwargs", "preemption", "remainder",
                 "step", "sync_gradients")

    def __init__(self, num_steps: int, plugin_kwargs: dict[str, Any] | None = None) -> None:
        self.num_steps = num_steps
        #: HF Accelerate's ``GradientAccumulationPlugin.to_kwargs()``: the plugin's fields set away from
        #: their defaults (``sync_each_batch``, ``sync_with_dataloader``, ``adjust_scheduler``).
        self.plugin_kwargs: dict[str, Any] = dict(plugin_kwargs or {})
        self.sync_gradients = True
        self.end_of_dataloader = False
        #: Samples of the last global batch that are real (not padding), -1 when unknown.
        self.remainder = -1
        self.active_dataloaders: list[Any] = []
        #: Micro-steps taken since the last synchronisation (advanced by ``accumulate``).
        self.step = 0
        #: ``accelerator.resume()``'s :class:`~plait.resume.Preemption`: prepared dataloaders call its
        #: ``at_step_boundary()`` before each batch that follows a synchronised step; ``None`` until armed.
        self.preemption: Any = None

    @property
    def accumulation_steps(self) -> int:
        """``num_steps``, checked when set (``accelerator.gradient_accumulation_steps``)."""
        return self.num_steps

    @accumulation_steps.setter
    def accumulation_steps(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gradient_accumulation_steps={value!r} is not valid: expected a whole number of at least 1")
        self.num_steps = value

    @property
    def sync_with_dataloader(self) -> bool:
        """Whether the dataloader's last batch always synchronises and steps (default ``True``)."""
        return bool(self.plugin_kwargs.get("sync_with_dataloader", True))

    @property
    def sync_each_batch(self) -> bool:
        """Whether gradients synchronise across processes on every micro-step (default ``False``)."""
        return bool(self.plugin_kwargs.get("sync_each_batch", False))

    @property
    def adjust_scheduler(self) -> bool:
        """Whether scheduler steps skipped while accumulating still count (Accelerate reads the plugin's
        ``to_kwargs()``, so only a value set away from the field's default counts: ``False`` unless set)."""
        return bool(self.plugin_kwargs.get("adjust_scheduler", False))

    @property
    def in_dataloader(self) -> bool:
        return bool(self.active_dataloaders)

    def begin(self, dataloader: Any) -> None:
        self.end_of_dataloader = False
        self.remainder = -1
        self.active_dataloaders.append(dataloader)

    def end(self, dataloader: Any) -> None:
        if dataloader in self.active_dataloaders:
            self.active_dataloaders.remove(dataloader)
        self.end_of_dataloader = False
