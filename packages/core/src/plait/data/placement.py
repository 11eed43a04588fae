"""Placing batches on the device: the placers a prepared dataloader calls on every batch."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch

from plait.nested import send_to_device


def unplaced(batch: Any) -> Any:
    """The batch placer that leaves every batch where it is (``plait_batch_placer`` may return it);
    a prepared loader recognises it and calls nothing per batch."""
    return batch


def only_cpu_tensors() -> bool:
    """Whether every tensor this process can make is on the CPU: no accelerator (CUDA, MPS, XPU,
    ...) is available and torch_xla is not loaded. Batches then need no placement on the CPU."""
    if "torch_xla" in sys.modules:
        return False
    accelerators = getattr(torch, "accelerator", None)
    if accelerators is not None:
        return not bool(accelerators.is_available())
    return not torch.cuda.is_available()


def batch_placer(device: torch.device, non_blocking: bool) -> Callable[[Any], Any]:
    """The function that moves each batch to ``device`` (:func:`unplaced` when nothing can be elsewhere)."""
    if device.type == "cpu" and only_cpu_tensors():
        return unplaced
    place = functools.partial(send_to_device, device=device, non_blocking=non_blocking)
    return _cpu_placer(place) if device.type == "cpu" else place


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
