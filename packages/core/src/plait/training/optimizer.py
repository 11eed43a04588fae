"""The prepared optimizer: steps and zeroes only on synchronising micro-steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from plait.precision import Precision
from plait.training.gradient_state import GradientState


class AcceleratedOptimizer(torch.optim.Optimizer):
    """Wraps a user's optimizer. ``step`` and ``zero_grad`` do nothing while gradients accumulate.

    It is a :class:`torch.optim.Optimizer`, so schedulers can be built on it; its
    ``param_groups``, ``state`` and ``defaults`` are the wrapped optimizer's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, gradient_state: GradientState, precision: Precision) -> None:
        # Deliberately no super().__init__: every attribute is the wrapped optimizer's.
        self.optimizer = optimizer
        self.gradient_state = gradient_state
        self.precision = precision
        self.step_was_skipped = False

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.gradient_state.sync_gradients:
            # No keyword when it is the default: torch's zero_grad sits under wrappers that copy **kwargs.
            if set_to_none:
                self.optimizer.zero_grad()
            else:
                self.optimizer.zero_grad(set_to_none=False)

    def step(self, closure: Callable[[], Any] | None = None) -> None:  # type: ignore[override]
        if self.gradient_state.sync_gradients:
            precision = self.precision
            if precision.plain_step and closure is None:
                self.optimizer.step()
                self.step_was_skipped = False
            else:
                self.step_was_skipped = not precision.optimizer_step(self.optimizer, closure)

    def train(self) -> None:
        """Forward to optimizers with a train mode (schedule-free optimizers)."""
        if hasattr(self.optimizer, "train"):
            self.optimizer.train()

    def eval(self) -> None:
        """Forward to optimizers with an eval mode (schedule-free optimizers)."""
        if hasattr(self.optimizer, "eval"):
            self.optimizer.eval()

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"
