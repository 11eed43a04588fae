"""Gradient synchronisation of sharded models: skipping the reduce-scatter during accumulation, and
clipping by the global norm over every shard. Imported from hook bodies only (it imports torch)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import Any

import torch

from plait.training import GradientSyncControl
from plait_fsdp.wrapping import is_sharded


class NoGradientSync:
    """Inside it, backward accumulates unsharded gradients locally (no reduce-scatter)."""

    __slots__ = ("_model",)

    def __init__(self, model: Any) -> None:
        self._model = model

    def __enter__(self) -> None:
        self._model.set_requires_gradient_sync(False)

    def __exit__(self, *exc: object) -> None:
        self._model.set_requires_gradient_sync(True)


class FSDPSyncControl(GradientSyncControl):
    """A sharded model skips its reduce-scatter through ``set_requires_gradient_sync``; anything else as core does."""

    def skips_sync(self, model: torch.nn.Module) -> bool:
        return is_sharded(model) or super().skips_sync(model)

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[Any]:
        return NoGradientSync(model) if is_sharded(model) else super().no_sync(model)


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float) -> torch.Tensor | None:
    """Clip by the norm over every process's shards; ``None`` when no gradient is sharded (core's default clips)."""
    from torch.distributed.tensor import DTensor

    parameters = list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return None
    # Each process holds a shard of every gradient: the norm of the shards is reduced to the global one.
    total = torch.nn.utils.get_total_norm(grads, norm_type)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total
