"""Prepared dataloaders on XLA: batches reach the device through torch_xla's ``MpDeviceLoader``.

Core's :class:`~plait.data.DataLoaderShard` keeps its bookkeeping (each process's share, the resumable
position, the end of the epoch) in the loop the user iterates; only where batches come from changes:
``MpDeviceLoader`` reads the CPU batches ahead in its threads and copies them to the device (under SPMD
split along the mesh's data axis). The graph is cut (``torch_xla.sync()``) before a batch that follows a
synchronising step, not on the micro-steps of accumulation: ``k`` micro-steps and their optimizer step
are one graph, compiled once. Imported from hook bodies only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from plait.data import DataLoaderShard, ShardLayout

if TYPE_CHECKING:
    from plait.training.gradient_state import GradientState


class BatchSharding:
    """The ``input_sharding`` of ``MpDeviceLoader`` under SPMD: every tensor of a batch split along dimension 0
    over the mesh's one axis, whatever its number of dimensions (torch_xla's ``ShardingSpec`` fits one)."""

    minibatch = False

    def __init__(self, mesh: Any) -> None:
        self.mesh = mesh
        self._specs: dict[int, Any] = {}

    def xla_spec(self, tensor: torch.Tensor) -> Any:
        import torch_xla.distributed.spmd as xs

        if tensor.dim() == 0:
            return None  # a scalar is replicated
        spec = self._specs.get(tensor.dim())
        if spec is None:
            axis = self.mesh.axis_names[0]
            spec = self._specs[tensor.dim()] = xs.ShardingSpec(self.mesh, (axis, *([None] * (tensor.dim() - 1))))
        return spec.xla_spec(tensor)


class _CpuBatches:
    """The CPU batches of a shard, as torch's own iterator makes them: what ``MpDeviceLoader`` reads ahead."""

    def __init__(self, shard: XlaDataLoaderShard) -> None:
        self.shard = shard

    def __iter__(self) -> Iterator[Any]:
        return DataLoader._get_iterator(self.shard)

    def __len__(self) -> int:
        return DataLoader.__len__(self.shard)


class XlaDataLoaderShard(DataLoaderShard):
    """Core's prepared loader, its batches read and placed by ``MpDeviceLoader`` on ``device``."""

    def __init__(self, dataloader: DataLoader[Any], gradient_state: GradientState, layout: ShardLayout,
                 device: torch.device, input_sharding: BatchSharding | None) -> None:
        super().__init__(dataloader, gradient_state, _cut_graph_after_steps(gradient_state), layout)
        self.xla_device = device
        self.input_sharding = input_sharding

    def _get_iterator(self) -> Any:
        from torch_xla.distributed.parallel_loader import MpDeviceLoader

        # MpDeviceLoader would cut the graph before every batch; the placer cuts it at step boundaries only.
        loader = MpDeviceLoader(_CpuBatches(self), self.xla_device, batches_per_execution=sys.maxsize,
                                input_sharding=self.input_sharding)
        return iter(loader)


def _cut_graph_after_steps(gradient_state: GradientState) -> Callable[[Any], Any]:
    """The placer: the batch is on the device already; after a synchronising step (and in loops that never
    accumulate, such as evaluation) the pending graph is executed first."""
    import torch_xla

    def place(batch: Any) -> Any:
        if gradient_state.sync_gradients:
            torch_xla.sync()
        return batch

    return place
