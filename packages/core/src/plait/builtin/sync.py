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


def _check_same_shapes(accelerator: Accelerator, tensor: torch.Tensor, operation: str) -> None:
    """With ``debug``, compare shapes across processes first, so a mismatch is an error instead of a hang."""
    if not accelerator.config.debug:
        return
    import torch.distributed as dist

    mine = (tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))
    every: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(every, mine)
    if any(other != every[0] for other in every):
        described = ", ".join(f"rank {rank} {shape} {dtype}" for rank, (shape, dtype) in enumerate(every))
        raise ValueError(
            f"{operation} was called with tensors of different shapes or dtypes across processes: {described}; "
            f"make them equal first (accelerator.pad_across_processes pads along one dimension)"
        )


@hookimpl(trylast=True)
def plait_all_gather(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return tensor
    import torch.distributed as dist

    _check_same_shapes(accelerator, tensor, "gather")
    tensor = tensor.contiguous()
    if tensor.dim() == 0:
        tensor = tensor[None]
    out = tensor.new_empty((accelerator.num_processes * tensor.shape[0], *tensor.shape[1:]))
    dist.all_gather_single(out, tensor)
    return out


_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX"}


@hookimpl(trylast=True)
def plait_all_reduce(accelerator: Accelerator, tensor: torch.Tensor, op: str) -> torch.Tensor:
    if accelerator.num_processes == 1 or op == "none":
        return tensor
    import torch.distributed as dist

    _check_same_shapes(accelerator, tensor, "reduce")
    dist.all_reduce(tensor, getattr(dist.ReduceOp, _OPS[op]))
    if op == "mean":
        tensor = tensor / accelerator.num_processes
    return tensor


@hookimpl(trylast=True)
def plait_broadcast(accelerator: Accelerator, tensor: torch.Tensor, from_process: int) -> torch.Tensor:
    if accelerator.num_processes == 1:
        return tensor
    import torch.distributed as dist

    _check_same_shapes(accelerator, tensor, "broadcast")
    dist.broadcast(tensor, src=from_process)
    return tensor


@hookimpl(trylast=True)
def plait_barrier(accelerator: Accelerator) -> bool:
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.barrier()
    return True


@hookimpl(trylast=True)
def plait_gather_object(accelerator: Accelerator, obj: Any) -> list[Any]:
    if accelerator.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    every: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(every, obj)
    return every


@hookimpl(trylast=True)
def plait_broadcast_object_list(accelerator: Accelerator, objects: list[Any], from_process: int) -> list[Any]:
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(objects, src=from_process)
    return objects
