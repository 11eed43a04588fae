"""The prepared learning-rate scheduler: steps only when its optimizers really stepped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plait.training.gradient_state import GradientState


class AcceleratedScheduler:
    """Wraps a user's scheduler with HF Accelerate's stepping rules.

    With ``step_with_optimizer`` (the default) a call to :meth:`step` is ignored
    while gradients accumulate or when an fp16 step was skipped; otherwise the
    scheduler steps once per process (``num_processes`` times), unless batches are
    split, so that a schedule written in samples-per-process terms keeps its length.
    """

    def __init__(
        self,
        scheduler: Any,
        optimizers: Sequence[Any],
        gradient_state: GradientState,
        step_with_optimizer: bool,
        split_batches: bool,
        num_processes: int,
    ) -> None:
        self.scheduler = scheduler
        self.optimizers = list(optimizers)
        self.gradient_state = gradient_state
        self.step_with_optimizer = step_with_optimizer
        self.split_batches = split_batches
        self.num_processes = num_processes

    def step(self, *args: Any, **kwargs: Any) -> None:
        if not self.step_with_optimizer:
            self.scheduler.step(*args, **kwargs)
            return
        if not self.gradient_state.sync_gradients:
            if self.gradient_state.adjust_scheduler:
                self.scheduler._step_count += 1
            return
        if any(getattr(opt, "step_was_skipped", False) for opt in self.optimizers):
            return
        repeats = 1 if self.split_batches else self.num_processes
        for _ in range(repeats):
            total = getattr(self.scheduler, "total_steps", None)
            if total is not None and self.scheduler._step_count > total:
                break
            self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return list(self.scheduler.get_last_lr())

    def state_dict(self) -> dict[str, Any]:
        return dict(self.scheduler.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)

    def get_lr(self) -> Any:
        return self.scheduler.get_lr()

    def print_lr(self, *args: Any, **kwargs: Any) -> Any:
        return self.scheduler.print_lr(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes not found normally: last_epoch, base_lrs, optimizer...
        if name == "scheduler":
            raise AttributeError(name)
        return getattr(self.scheduler, name)
