"""``skip_first_batches``: resuming in the middle of an epoch without loading the batches already seen."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Sampler

from plait.data.loader import DataLoaderShard
from plait.data.samplers import SkippableBatchSampler, loader_kwargs


class _SkippedView:
    """What ``skip_first_batches`` returns for a prepared loader: one pass that starts later.

    It shares the loader's epoch counter and position, so plain iteration of the
    loader afterwards continues with the next epoch, exactly as without a resume.
    """

    def __init__(self, dataloader: DataLoaderShard, num_batches: int) -> None:
        self._dataloader = dataloader
        self._num_batches = num_batches

    def __iter__(self) -> Iterator[Any]:
        self._dataloader.skip_next(self._num_batches)
        return iter(self._dataloader)

    def __len__(self) -> int:
        return max(len(self._dataloader) - self._num_batches, 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataloader, name)


def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
    """A loader whose next pass skips the first ``num_batches`` batches (without loading them when it can)."""
    if num_batches < 0:
        raise ValueError(f"num_batches={num_batches}: expected 0 or more batches to skip")
    if isinstance(dataloader, DataLoaderShard):
        return _SkippedView(dataloader, num_batches)
    if isinstance(dataloader, _SkippedView):
        return _SkippedView(dataloader._dataloader, dataloader._num_batches + num_batches)
    if isinstance(dataloader, DataLoader) and dataloader.batch_sampler is not None:
        skippable = SkippableBatchSampler(dataloader.batch_sampler)
        skippable.skip = num_batches

        class _Once(Sampler[Any]):
            def __len__(self) -> int:
                return max(len(skippable) - num_batches, 0)

            def __iter__(self) -> Iterator[Any]:
                skippable.skip = num_batches
                return iter(skippable)

        return DataLoader(
            dataloader.dataset, batch_sampler=_Once(), generator=dataloader.generator, **loader_kwargs(dataloader)
        )
    raise TypeError(
        f"skip_first_batches got {type(dataloader).__name__}: expected a DataLoader "
        f"(prepared with accelerator.prepare, or a map-style torch DataLoader)"
    )
