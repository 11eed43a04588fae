"""Prepared dataloaders: samplers (:mod:`~plait.data.samplers`), each process's share of the data
(:mod:`~plait.data.sharding`), the loader (:mod:`~plait.data.loader`), rank 0 dispatching batches
(:mod:`~plait.data.dispatch`), batch placement (:mod:`~plait.data.placement`) and resuming mid-epoch
(:mod:`~plait.data.skipping`). The names load their module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.lazy_names import lazy_names

if TYPE_CHECKING:
    from plait.data.loader import DataLoaderShard, ShardLayout
    from plait.data.placement import batch_placer, unplaced
    from plait.data.samplers import SeededRandomSampler, SkippableBatchSampler, draw_seed
    from plait.data.sharding import BatchSamplerShard, IterableDatasetShard, check_split
    from plait.data.skipping import skip_first_batches

_MODULE_OF = {
    "DataLoaderShard": "plait.data.loader",
    "ShardLayout": "plait.data.loader",
    "batch_placer": "plait.data.placement",
    "unplaced": "plait.data.placement",
    "SeededRandomSampler": "plait.data.samplers",
    "SkippableBatchSampler": "plait.data.samplers",
    "draw_seed": "plait.data.samplers",
    "BatchSamplerShard": "plait.data.sharding",
    "IterableDatasetShard": "plait.data.sharding",
    "check_split": "plait.data.sharding",
    "skip_first_batches": "plait.data.skipping",
}

__all__ = [
    "BatchSamplerShard",
    "DataLoaderShard",
    "IterableDatasetShard",
    "SeededRandomSampler",
    "ShardLayout",
    "SkippableBatchSampler",
    "batch_placer",
    "check_split",
    "draw_seed",
    "skip_first_batches",
    "unplaced",
]

__getattr__, __dir__ = lazy_names(globals(), _MODULE_OF)
