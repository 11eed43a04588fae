"""Gradient-accumulation state shared by an accelerator and the objects it prepared."""

from __future__ import annotations

from typing import Any


class GradientState:
    """Whether this micro-step synchronises gradients and steps, and where the active dataloader is.

    One per :class:`~plait.Accelerator` (never global): prepared optimizers,
    schedulers and dataloaders hold a reference to their accelerator's state.
    """

    __slots__ = ("active_dataloaders", "end_of_dataloader", "num_steps", "remainder", "step", "sync_gradients")

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.sync_gradients = True
        self.end_of_dataloader = False
        #: Samples of the last global batch that are real (not padding), -1 when unknown.
        self.remainder = -1
        self.active_dataloaders: list[Any] = []
        #: Micro-steps taken since the last synchronisation (advanced by ``accumulate``).
        self.step = 0

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
