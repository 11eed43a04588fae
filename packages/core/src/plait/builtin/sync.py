"""Sync defaults for one process: nothing to synchronise, clipping with torch.nn.utils."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from plait._markers import hookimpl

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator


@hookimpl(trylast=True)
def plait_no_sync(accelerator: Accelerator, model: torch.nn.Module) -> AbstractContextManager[Any]:
    no_sync = getattr(model, "no_sync", None)
    return no_sync() if callable(no_sync) else contextlib.nullcontext()


@hookimpl(trylast=True)
def plait_clip_grad_norm(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
) -> torch.Tensor:
    import torch

    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)


@hookimpl(trylast=True)
def plait_clip_grad_value(accelerator: Accelerator, parameters: Iterable[torch.Tensor], clip_value: float) -> bool:
    import torch

    torch.nn.utils.clip_grad_value_(parameters, clip_value)
    return True


@hookimpl(trylast=True)
def plait_all_gather(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    return tensor


@hookimpl(trylast=True)
def plait_all_reduce(accelerator: Accelerator, tensor: torch.Tensor, op: str) -> torch.Tensor:
    return tensor


@hookimpl(trylast=True)
def plait_broadcast(accelerator: Accelerator, tensor: torch.Tensor, from_process: int) -> torch.Tensor:
    return tensor


@hookimpl(trylast=True)
def plait_barrier(accelerator: Accelerator) -> bool:
    return True


@hookimpl(trylast=True)
def plait_gather_object(accelerator: Accelerator, obj: Any) -> list[Any]:
    return [obj]


@hookimpl(trylast=True)
def plait_broadcast_object_list(accelerator: Accelerator, objects: list[Any], from_process: int) -> list[Any]:
    return objects
