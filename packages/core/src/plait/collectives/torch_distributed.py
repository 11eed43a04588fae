"""The collectives of several processes over ``torch.distributed`` (gloo on CPU, nccl on CUDA).

Each primitive counts itself and waits inside a ``try``: when the wait times out, the error names
the processes it waited for (:mod:`plait.collectives.hangs`). With ``debug``, every process first
says what it is about to do, in one ``all_gather_object``, so that processes about to run different
operations (uneven batches) or tensors of different shapes get an error instead of a hang.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from plait.collectives.structured import Collectives
from plait.errors import CollectiveMismatchError

_OPS = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
#: torch 2.13 renamed all_gather_into_tensor (now deprecated) to all_gather_single.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
#: How the reports name the operations whose user-facing names differ.
_NAMES = {"barrier": "barrier (wait_for_everyone)", "backward": "backward (gradient synchronisation)"}


class TorchCollectives(Collectives):
    """Core's collectives for several processes, on the default process group."""

    # ------------------------------------------------------------------ what this process is doing, in words
    def _where(self, operation: str) -> str:
        """``"barrier (wait_for_everyone) #7"``: plait's 7th collective on this process (backward: its own count)."""
        number = self.backward_calls if operation == "backward" else self.calls
        label = _NAMES.get(operation, operation)
        return f"{label} #{number}" if number else label

    def _detail(self, operation: str) -> str:
        """``"after 4 backward calls; dataloader 0: epoch 0 finished after 4 batches"``."""
        parts = []
        if self.backward_calls and operation != "backward":
            parts.append(f"after {self.backward_calls} backward call{'s' if self.backward_calls != 1 else ''}")
        if self.progress is not None:
            try:
                parts.append(self.progress())
            except Exception as error:  # a description must never hide the error it explains
                parts.append(f"dataloaders not described: {error}")
        return "; ".join(part for part in parts if part)

    def raise_if_timed_out(self, error: BaseException, operation: str) -> None:
        from plait.collectives import hangs

        if hangs.is_timeout(error):
            where = self._where(operation)
            raise hangs.timeout_error(error, where, self._detail(operation), self.environment.rank, self.num_processes)

    # ------------------------------------------------------------------ debug: compare before waiting
    def check_operation(self, operation: str) -> None:
        if not self.debug:
            return
        if operation == "backward":
            if self.uneven_inputs:
                return  # join_uneven_inputs: processes that ran out of batches no longer call backward
            self.backward_calls += 1
        try:
            self._check(operation)
        except RuntimeError as error:
            self.raise_if_timed_out(error, operation)
            raise

    def _check(self, operation: str, tensor: torch.Tensor | None = None) -> None:
        """Every process says what it is about to do (and its tensor's shape and dtype); all raise when they differ."""
        shape = None if tensor is None else (tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))
        mine = (operation, self._where(operation), self._detail(operation), shape)
        every: list[Any] = [None] * self.num_processes
        dist.all_gather_object(every, mine)
        if any(other[0] != operation for other in every):
            described = "; ".join(
                f"rank {rank}: {where}" + (f" [{detail}]" if detail else "")
                for rank, (_, where, detail, _) in enumerate(every)
            )
            raise CollectiveMismatchError(
                f"PLAIT_DEBUG: the processes are about to run different operations, which would hang: {described}. "
                f"If their data is uneven (even_batches=False, or a dataloader not passed to prepare, gives them "
                f"different numbers of batches), give every process the same number of batches (even_batches=True) "
                f"or train inside accelerator.join_uneven_inputs([model]); otherwise make every process call the same "
                f"collectives, and backward, in the same order"
            )
        if tensor is not None and any(other[3] != shape for other in every):
            described = ", ".join(f"rank {rank} {s} {dtype}" for rank, (*_, (s, dtype)) in enumerate(every))
            raise ValueError(
                f"{operation} was called with tensors of different shapes or dtypes across processes: {described}; "
                f"make them equal first (accelerator.pad_across_processes pads along one dimension)"
            )

    # ------------------------------------------------------------------ the primitives
    def _wait(self, operation: str, collective: Callable[..., Any], *args: Any,
              tensor: torch.Tensor | None = None, **kwargs: Any) -> None:
        """Count the call, compare with the other processes first (``debug``), run ``collective(*args,
        **kwargs)``; a timed-out wait raises :class:`~plait.errors.CollectiveTimeoutError` naming them."""
        self.calls += 1
        try:
            if self.debug:
                self._check(operation, tensor)
            collective(*args, **kwargs)
        except RuntimeError as error:
            self.raise_if_timed_out(error, operation)
            raise

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        if tensor.dim() == 0:
            tensor = tensor[None]
        out = tensor.new_empty((self.num_processes * tensor.shape[0], *tensor.shape[1:]))
        self._wait("gather", _all_gather_single, out, tensor, tensor=tensor)
        return out

    def all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        if op == "none":
            return tensor
        self._wait("reduce", dist.all_reduce, tensor, _OPS[op], tensor=tensor)
        if op == "mean":
            tensor = tensor / self.num_processes
        return tensor

    def broadcast_tensor(self, tensor: torch.Tensor, from_process: int) -> torch.Tensor:
        self._wait("broadcast", dist.broadcast, tensor, src=from_process, tensor=tensor)
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        every: list[Any] = [None] * self.num_processes
        self._wait("gather_object", dist.all_gather_object, every, obj)
        return every

    def broadcast_objects(self, objects: list[Any], from_process: int) -> list[Any]:
        self._wait("broadcast_object_list", dist.broadcast_object_list, objects, src=from_process)
        return objects

    def barrier(self) -> None:
        self._wait("barrier", dist.barrier)
