"""The all-reduce of gradients in 8 bits: a DistributedDataParallel communication hook.

For each gradient bucket, every process agrees on one scale (the largest magnitude of any process's bucket,
over 127: one all-reduce of a single number), rounds its gradients to int8 with it, and the int8 tensors are
all-gathered: a quarter of float32's bytes per element. Each process then sums the gathered integers and
multiplies by ``scale / world_size``: the average DDP would have computed, with an error of at most ``scale / 2``
per element (each process's rounding is at most half a step, and the average of the errors is no larger).

Imported from hook bodies only (it imports torch). Without ``from __future__ import annotations``: DDP reads the
hook's annotations at registration and accepts only the objects themselves (``dist.GradBucket``), not strings.
"""

from typing import Any

import torch
import torch.distributed as dist

#: The largest int8 step: values are rounded to -127..127 so that the range is symmetric.
LEVELS = 127


def shared_scale(tensor: torch.Tensor, group: Any) -> torch.Tensor:
    """The scale every process of ``group`` uses for this bucket: the largest magnitude over all of them, / 127
    (1 for a bucket of zeros, which then travels as zeros)."""
    peak = tensor.detach().abs().max().reshape(1).to(torch.float32)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
    return torch.where(peak > 0, peak / LEVELS, torch.ones_like(peak))


def quantize(tensor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``tensor`` rounded to the int8 steps of ``scale``."""
    return torch.clamp(torch.round(tensor.to(torch.float32) / scale), -LEVELS, LEVELS).to(torch.int8)


def average(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The average of ``tensor`` over the processes of ``group``, communicated as int8; written into ``tensor``
    and returned. Every process must call it with a tensor of the same shape."""
    world = dist.get_world_size(group)
    scale = shared_scale(tensor, group)
    mine = quantize(tensor, scale).flatten()
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    total = torch.stack(gathered).to(torch.int32).sum(dim=0)  # at most 127 * world: no overflow in int32
    tensor.copy_((total.to(torch.float32) * (scale / world)).reshape(tensor.shape))
    return tensor


def int8_hook(state: Any, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:  # type: ignore[name-defined]
    """DDP's communication hook: ``state`` is ``(process group or None, min_elements)``."""
    group, min_elements = state
    buffer = bucket.buffer()
    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    if buffer.numel() < min_elements:  # small buckets: the float32 average, as DDP's own hook computes it
        dist.all_reduce(buffer, group=group)
        future.set_result(buffer.div_(dist.get_world_size(group)))
    else:
        future.set_result(average(buffer, group))
    return future
