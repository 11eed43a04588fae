"""The collectives of several processes over ``torch.distributed`` (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from plait.collectives.structured import Collectives

_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
#: torch 2.13 renamed all_gather_into_tensor (now deprecated) to all_gather_single.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class TorchCollectives(Collectives):
    """Core's collectives for several processes, on the default process group."""

    def _check_same_shapes(self, tensor: torch.Tensor, operation: str) -> None:
        """With ``debug``, compare shapes across processes first, so a mismatch is an error instead of a hang."""
        if not self.debug:
            return
        mine = (tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))
        every: list[Any] = [None] * self.num_processes
        dist.all_gather_object(every, mine)
        if any(other != every[0] for other in every):
            described = ", ".join(f"rank {rank} {shape} {dtype}" for rank, (shape, dtype) in enumerate(every))
            raise ValueError(
                f"{operation} was called with tensors of different shapes or dtypes across processes: {described}; "
                f"make them equal first (accelerator.pad_across_processes pads along one dimension)"
            )

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        self._check_same_shapes(tensor, "gather")
        tensor = tensor.contiguous()
        if tensor.dim() == 0:
            tensor = tensor[None]
        out = tensor.new_empty((self.num_processes * tensor.shape[0], *tensor.shape[1:]))
        _all_gather_single(out, tensor)
        return out

    def all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if op == "none":
            return tensor
        self._check_same_shapes(tensor, "reduce")
        dist.all_reduce(tensor, _OPS[op])
        if op == "mean":
            tensor = tensor / self.num_processes
        return tensor

    def broadcast_tensor(self, tensor: torch.Tensor, from_process: int) -> torch.Tensor:
        self._check_same_shapes(tensor, "broadcast")
        dist.broadcast(tensor, src=from_process)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        every: list[Any] = [None] * self.num_processes
        dist.all_gather_object(every, obj)
        return every

    def broadcast_objects(self, objects: list[Any], from_process: int) -> list[Any]:
        dist.broadcast_object_list(objects, src=from_process)
        return objects

    def barrier(self) -> None:
        dist.barrier()
