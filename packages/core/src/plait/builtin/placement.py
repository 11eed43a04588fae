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


@hookimpl(trylast=True)
def plait_batch_placer(accelerator: Accelerator, dataloader: Any) -> Callable[[Any], Any]:
    from plait.data import unplaced
    from plait.operations import send_to_device

    if not accelerator.device_placement:
        return unplaced
    if accelerator.device.type == "cpu" and _only_cpu_tensors():
        return unplaced
    non_blocking = bool(getattr(dataloader, "pin_memory", False))
    place = functools.partial(send_to_device, device=accelerator.device, non_blocking=non_blocking)
    return _cpu_placer(place) if accelerator.device.type == "cpu" else place


def _only_cpu_tensors() -> bool:
    """Whether every tensor this process can make is on the CPU: no accelerator (CUDA, MPS, XPU,
    ...) is available and torch_xla is not loaded. Batches then need no placement on the CPU."""
    import sys

    import torch

    if "torch_xla" in sys.modules:
        return False
    accelerators = getattr(torch, "accelerator", None)
    if accelerators is not None:
        return not accelerators.is_available()
    return not torch.cuda.is_available()


def _cpu_placer(place: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """On CPU, a batch whose tensors are all on the CPU already (what a DataLoader yields) is returned as
    it is: checking costs a third of rebuilding it. Anything else goes through ``place``."""
    from torch import Tensor

    def on_cpu(batch: Any) -> Any:
        cls = type(batch)
        if cls is list or cls is tuple:
            items = batch
        elif cls is dict:
            items = batch.values()
        else:
            return place(batch)
        for item in items:
            if not (isinstance(item, Tensor) and item.is_cpu):
                return place(batch)
        return batch

    return on_cpu
