"""Prepared dataloaders: samplers (:mod:`~plait.data.samplers`), each process's share of the data
(:mod:`~plait.data.sharding`), the loader (:mod:`~plait.data.loader`), rank 0 dispatching batches
(:mod:`~plait.data.dispatch`), batch placement (:mod:`~plait.data.placement`) and resuming mid-epoch
(:mod:`~plait.data.skipping`)."""

from __future__ import annotations

from plait.data.loader import DataLoaderShard, ShardLayout
from plait.data.placement import batch_placer, unplaced
from plait.data.samplers import SeededRandomSampler, SkippableBatchSampler, draw_seed
from plait.data.sharding import BatchSamplerShard, IterableDatasetShard, check_split
from plait.data.skipping import skip_first_batches

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
