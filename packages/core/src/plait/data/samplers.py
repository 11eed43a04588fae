"""Samplers of prepared dataloaders: seeded shuffling whose order is a pure function of ``(seed, epoch)``,
and batch samplers that skip batches without loading their data."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

# DataLoader arguments carried over to a rebuilt loader (the sampling ones are rebuilt).
_LOADER_KWARGS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def loader_kwargs(dataloader: DataLoader[Any]) -> dict[str, Any]:
    """The arguments of ``dataloader`` that a loader rebuilt from it keeps (workers, collation, pinning...)."""
    kwargs = {k: getattr(dataloader, k) for k in _LOADER_KWARGS if hasattr(dataloader, k)}
    if kwargs.get("num_workers", 0) == 0:
        kwargs.pop("prefetch_factor", None)
    return kwargs


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 63-bit seed drawn from ``generator`` (the global torch RNG when ``None``)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


class SeededRandomSampler(Sampler[int]):
    """A :class:`~torch.utils.data.RandomSampler` whose order in epoch ``e`` depends only on ``seed + e``."""

    def __init__(self, data_source: Any, seed: int, num_samples: int | None = None, replacement: bool = False) -> None:
        self.data_source = data_source
        self.seed = seed
        self.replacement = replacement
        self._num_samples = num_samples
        self.epoch = 0

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        n = len(self.data_source)
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        if self.replacement:
            yield from torch.randint(high=n, size=(self.num_samples,), dtype=torch.int64, generator=generator).tolist()
            return
        for _ in range(self.num_samples // n):
            yield from torch.randperm(n, generator=generator).tolist()
        yield from torch.randperm(n, generator=generator).tolist()[: self.num_samples % n]


class SkippableBatchSampler(Sampler[list[int]]):
    """Wraps a batch sampler; the next iteration skips ``skip`` batches without loading their data."""

    def __init__(self, batch_sampler: Any) -> None:
        self.batch_sampler = batch_sampler
        self.skip = 0

    @property
    def sampler(self) -> Any:
        return getattr(self.batch_sampler, "sampler", None)

    @property
    def batch_size(self) -> int | None:
        return getattr(self.batch_sampler, "batch_size", None)

    @property
    def drop_last(self) -> bool:
        return bool(getattr(self.batch_sampler, "drop_last", False))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Any]:
        # No generator of our own: the DataLoader pulls every batch of indices straight from these iterators.
        skip, self.skip = self.skip, 0
        iterator = iter(self.batch_sampler)
        return itertools.islice(iterator, skip, None) if skip else iterator


def with_seeded_sampler(dataloader: DataLoader[Any]) -> tuple[Any, int | None]:
    """The loader's batch sampler, with a standard RandomSampler replaced by a seeded one."""
    batch_sampler = dataloader.batch_sampler
    sampler = getattr(batch_sampler, "sampler", None)
    if type(batch_sampler) is BatchSampler and type(sampler) is RandomSampler:
        seed = draw_seed(sampler.generator)
        seeded = SeededRandomSampler(sampler.data_source, seed, sampler._num_samples, sampler.replacement)
        return BatchSampler(seeded, batch_sampler.batch_size, batch_sampler.drop_last), seed
    return batch_sampler, None


