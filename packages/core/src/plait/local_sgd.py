"""HF Accelerate's ``accelerate.local_sgd``: local SGD, averaging parameters every few steps.

Inside ``with LocalSGD(accelerator, model, local_sgd_steps=k) as local_sgd:`` each process
trains its own replica without synchronising gradients (the model's ``no_sync``); every
``k``-th ``local_sgd.step()``, and on leaving the block, the parameters are averaged across
processes. With one process it does nothing.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from plait.errors import not_supported
from plait.process.environment import DistributedType

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator

__all__ = ["LocalSGD"]

_SUPPORTED = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


class LocalSGD:
    """Run ``local_sgd_steps`` optimizer steps independently on each process, then average the parameters.

    Only data-parallel runs (``ddp``, one process); sharded models (FSDP, DeepSpeed) are refused.

    :param accelerator: the run's accelerator (``model`` was prepared by it).
    :param model: the prepared model whose parameters are averaged.
    :param local_sgd_steps: steps between two averages (at least 1).
    :param enabled: ``False`` turns local SGD off (the block then runs as plain data-parallel training).
    """

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, local_sgd_steps: int, enabled: bool = True) -> None:
        kind = accelerator.distributed_type
        if kind not in _SUPPORTED:
            raise not_supported(
                f"LocalSGD with distributed_type={kind!s} (backend {accelerator.backend!r})",
                "it averages whole replicas, so it runs on one process or with backend 'ddp' only",
            )
        if isinstance(local_sgd_steps, bool) or not isinstance(local_sgd_steps, int) or local_sgd_steps < 1:
            raise ValueError(f"local_sgd_steps={local_sgd_steps!r} is not valid: expected a whole number of at least 1")
        self.enabled = bool(enabled) and kind != DistributedType.NO
        self.num_steps = 0
        self.accelerator = accelerator
        self.model = model
        self.local_sgd_steps = local_sgd_steps
        self._no_sync: AbstractContextManager[Any] | None = None

    def __enter__(self) -> LocalSGD:
        if self.enabled:
            self._no_sync = self.accelerator.no_sync(self.model)
            self._no_sync.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        if not self.enabled or self._no_sync is None:
            return None
        context, self._no_sync = self._no_sync, None
        if kind is None:  # a failing block is not averaged: the other processes may not be here to join
            self._average()
        return context.__exit__(kind, error, traceback)

    def step(self) -> None:
        """Count one optimizer step; every ``local_sgd_steps``-th one averages the parameters across processes."""
        self.num_steps += 1
        if self.enabled and self.num_steps % self.local_sgd_steps == 0:
            self._average()

    def _average(self) -> None:
        """Replace every parameter by its mean over the processes (a collective: every process calls it)."""
        self.accelerator.wait_for_everyone()
        for parameter in self.model.parameters():
            parameter.data = self.accelerator.reduce(parameter.data, reduction="mean")
