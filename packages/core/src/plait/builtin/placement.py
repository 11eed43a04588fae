"""Placement defaults: models and batches go to ``accelerator.device``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plait._markers import hookimpl

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator


@hookimpl(trylast=True)
def plait_place_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    return model.to(accelerator.device)


def _identity(batch: Any) -> Any:
    return batch


@hookimpl(trylast=True)
def plait_batch_placer(accelerator: Accelerator, dataloader: Any) -> Callable[[Any], Any]:
    from plait.operations import send_to_device

    if not accelerator.device_placement:
        return _identity
    non_blocking = bool(getattr(dataloader, "pin_memory", False))
    return functools.partial(send_to_device, device=accelerator.device, non_blocking=non_blocking)
