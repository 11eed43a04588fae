"""Collectives of one process per XLA device, on XLA's own operations (``xm.all_gather``, ``xm.all_reduce``,
``xm.collective_broadcast``, ``xm.rendezvous``). Imported from hook bodies only.

Under SPMD there is one process, and core's single-process :class:`~plait.collectives.Collectives` is right:
a tensor is already global there. On XLA's CPU device, processes started by torchrun are not connected
(each runtime sees one replica; pytorch/xla #9089 for ``torch_xla.launch``): a collective across them is
refused rather than returning this process's values as if they were everyone's.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch

from plait.collectives import Collectives
from plait.errors import PluginError

_OPS = {"sum": "sum", "mean": "sum", "max": "max"}


class XlaCollectives(Collectives):
    """The six primitives on XLA's collectives; HF Accelerate's structured operations are core's."""

    def __init__(self, environment: Any, device: torch.device, debug: bool = False) -> None:
        super().__init__(environment, device, debug)
        from plait_xla.runtime import xla_world_size

        self.replicas = xla_world_size()

    def _check_connected(self, operation: str) -> None:
        self.calls += 1
        if self.replicas != self.num_processes:
            raise PluginError(
                f"{operation} across {self.num_processes} processes: XLA's runtime here connects "
                f"{self.replicas} replica(s), so its collectives cannot reach the other processes (XLA's CPU "
                f"device runs each process on its own; pytorch/xla #9089). Run one process per device on TPU, or "
                f"one process over every device with spmd: true (--xla-spmd)"
            )

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        import torch_xla.core.xla_model as xm

        self._check_connected("gather")
        if tensor.dim() == 0:
            tensor = tensor[None]
        gathered: torch.Tensor = xm.all_gather(tensor.to(self.device), dim=0)
        return gathered

    def all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        import torch_xla.core.xla_model as xm

        if op == "none":
            return tensor
        self._check_connected("reduce")
        scale = 1.0 / self.num_processes if op == "mean" else 1.0
        reduced = xm.all_reduce(_OPS[op], tensor.to(self.device), scale=scale)
        assert isinstance(reduced, torch.Tensor)  # one tensor in, one out
        return reduced

    def broadcast_tensor(self, tensor: torch.Tensor, from_process: int) -> torch.Tensor:
        import torch_xla.core.xla_model as xm

        self._check_connected("broadcast")
        placed = tensor.to(self.device)
        xm.collective_broadcast([placed], root_ordinal=from_process)
        return placed

    def gather_objects(self, obj: Any) -> list[Any]:
        import torch_xla.core.xla_model as xm

        self._check_connected("gather_object")
        return [pickle.loads(payload) for payload in xm.rendezvous(f"plait.gather_object.{self.calls}", pickle.dumps(obj))]

    def broadcast_objects(self, objects: list[Any], from_process: int) -> list[Any]:
        import torch_xla.core.xla_model as xm

        self._check_connected("broadcast_object_list")
        payload = pickle.dumps(list(objects)) if self.environment.rank == from_process else b""
        every = xm.rendezvous(f"plait.broadcast_object_list.{self.calls}", payload)
        objects[:] = pickle.loads(every[from_process])
        return objects

    def barrier(self) -> None:
        import torch_xla.core.xla_model as xm

        self._check_connected("barrier")
        xm.rendezvous(f"plait.barrier.{self.calls}")
