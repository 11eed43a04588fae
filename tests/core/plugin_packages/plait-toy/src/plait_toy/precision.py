"""The toy backend's precision: full precision, every loss multiplied by ``loss_scale``, backward calls counted."""

from __future__ import annotations

from typing import Any

from plait.precision import Precision


class ToyPrecision(Precision):
    def __init__(self, device: Any, loss_scale: float) -> None:
        super().__init__(device)
        self.loss_scale = loss_scale
        self.backward_calls = 0

    def backward(self, loss: Any, **kwargs: Any) -> None:
        self.backward_calls += 1
        (loss * self.loss_scale).backward(**kwargs)
