"""Prepared dataloaders: seeded shuffling, a resumable position, end-of-epoch detection, placement.

Exact resume rests on three facts: the shuffle order of epoch ``e`` is a pure
function of ``(seed, e)``; starting an epoch never draws from the global torch
RNG (so dropout continues identically after a resume); and the epoch counter is
shared by the dataloader and every view ``skip_first_batches`` returns of it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, Sampler

from plait.sharding import BatchSamplerShard, IterableDatasetShard, check_split

if TYPE_CHECKING:
    from plait.state import GradientState

# DataLoader arguments carried over to the prepared loader (the sampling ones are rebuilt).
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


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 63-bit seed drawn from ``generator`` (the global torch RNG when ``None``)."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def unplaced(batch: Any) -> Any:
    """The batch placer that leaves every batch where it is (``plait_batch_placer`` may return it);
    a prepared loader recognises it and calls nothing per batch."""
    return batch


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


def _with_seeded_sampler(dataloader: DataLoader) -> tuple[Any, int | None]:
    """The loader's batch sampler, with a standard RandomSampler replaced by a seeded one."""
    batch_sampler = dataloader.batch_sampler
    sampler = getattr(batch_sampler, "sampler", None)
    if type(batch_sampler) is BatchSampler and type(sampler) is RandomSampler:
        seed = draw_seed(sampler.generator)
        seeded = SeededRandomSampler(sampler.data_source, seed, sampler._num_samples, sampler.replacement)
        return BatchSampler(seeded, batch_sampler.batch_size, batch_sampler.drop_last), seed
    return batch_sampler, None


@dataclass(frozen=True)
class ShardLayout:
    """How a prepared loader shares data among processes (HF Accelerate's options)."""

    num_processes: int = 1
    process_index: int = 0
    split_batches: bool = False
    even_batches: bool = True
    #: Rank 0 reads every global batch and sends each process its rows.
    dispatch_batches: bool = False
    #: ``share([obj])`` returns rank 0's objects on every process (a broadcast).
    share: Callable[[list[Any]], list[Any]] | None = None

    def broadcast(self, *objects: Any) -> list[Any]:
        if self.num_processes == 1 or self.share is None:
            return list(objects)
        return self.share(list(objects))


class DataLoaderShard(DataLoader):
    """The dataloader ``prepare`` returns: this process's batches, on the device, with a resumable position.

    ``len()`` is the number of batches per epoch for this process. ``epoch`` counts
    completed passes (HF Accelerate's ``iteration``); ``position`` counts the
    batches consumed in the current pass.
    """

    def __init__(
        self,
        dataloader: DataLoader,
        gradient_state: GradientState,
        place: Callable[[Any], Any] | None,
        layout: ShardLayout | None = None,
    ) -> None:
        layout = layout or ShardLayout()
        n = layout.num_processes
        kwargs = {k: getattr(dataloader, k) for k in _LOADER_KWARGS if hasattr(dataloader, k)}
        if kwargs.get("num_workers", 0) == 0:
            kwargs.pop("prefetch_factor", None)
        # A private generator: starting an epoch must not draw from the global RNG (see module docstring).
        self._loader_generator = torch.Generator()
        self._iterable = isinstance(dataloader.dataset, IterableDataset)
        self.layout = layout
        self.seed: int | None = None
        self._dispatch = layout.dispatch_batches and n > 1
        self._iterable_shard: IterableDatasetShard | None = None
        #: Real samples in the last global batch when padding completed it (for gather_for_metrics), else -1.
        self.remainder = -1
        batch_size = dataloader.batch_size
        global_batch = None if batch_size is None else (batch_size if layout.split_batches else batch_size * n)
        if layout.split_batches and n > 1:
            check_split(batch_size, n)
        self.per_process_batch_size = batch_size // n if (layout.split_batches and batch_size) else batch_size
        if self._iterable or dataloader.batch_sampler is None:
            self._skippable: SkippableBatchSampler | None = None
            dataset = dataloader.dataset
            loader_batch = batch_size
            if n > 1 and batch_size is not None:
                assert global_batch is not None  # known with batch_size
                if self._dispatch:
                    loader_batch = global_batch
                    if layout.even_batches:
                        # Rank 0 completes a short last global batch from the first one, as the sharded mode does.
                        dataset = self._iterable_shard = IterableDatasetShard(
                            dataset, global_batch, 1, 0, False, dataloader.drop_last
                        )
                else:
                    dataset = self._iterable_shard = IterableDatasetShard(
                        dataset, batch_size, n, layout.process_index, layout.split_batches, dataloader.drop_last
                    )
                    loader_batch = self._iterable_shard.process_batch_size
            super().__init__(
                dataset, batch_size=loader_batch, drop_last=dataloader.drop_last,
                generator=self._loader_generator, **kwargs,
            )
        else:
            batch_sampler, seed = _with_seeded_sampler(dataloader)
            # Every process must shuffle alike, or their shards overlap: rank 0's seed wins.
            if seed is not None:
                self.seed = int(layout.broadcast(seed)[0])
                batch_sampler.sampler.seed = self.seed
            if n > 1:
                if self._dispatch:
                    if type(batch_sampler) is not BatchSampler:
                        raise ValueError(
                            f"dispatch_batches needs a DataLoader built with batch_size, not a custom batch sampler "
                            f"({type(batch_sampler).__name__}): set dispatch_batches to false"
                        )
                    assert global_batch is not None  # a standard BatchSampler has a batch size
                    batch_sampler = BatchSampler(batch_sampler.sampler, global_batch, batch_sampler.drop_last)
                    if layout.even_batches:
                        # A short last global batch is completed with the epoch's first indices, as when sharding.
                        batch_sampler = BatchSamplerShard(batch_sampler, 1, 0, split_batches=True)
                else:
                    batch_sampler = BatchSamplerShard(
                        batch_sampler, n, layout.process_index, layout.split_batches, layout.even_batches
                    )
                if layout.even_batches and not dataloader.drop_last and global_batch:
                    sampler = getattr(batch_sampler, "sampler", None)
                    samples = len(sampler) if hasattr(sampler, "__len__") else len(dataloader.dataset)  # type: ignore[arg-type]
                    self.remainder = samples % global_batch
            self._skippable = SkippableBatchSampler(batch_sampler)
            super().__init__(
                dataloader.dataset, batch_sampler=self._skippable, generator=self._loader_generator, **kwargs
            )
        self.base_dataloader = dataloader
        self.gradient_state = gradient_state
        self.place = None if place is unplaced else place
        self.epoch = 0
        #: ``position``, in a list the iteration updates in place: no attribute is set per batch.
        self._cursor = [0]
        self._skip = 0

    @property
    def position(self) -> int:
        """Batches consumed in the current pass."""
        return self._cursor[0]

    @position.setter
    def position(self, value: int) -> None:
        self._cursor[0] = value

    # -- HF Accelerate's attribute names ------------------------------------------------------
    @property
    def iteration(self) -> int:
        return self.epoch

    @property
    def total_batch_size(self) -> int | None:
        """Samples per step over all processes."""
        size = self.per_process_batch_size
        return None if size is None else size * self.layout.num_processes

    @property
    def total_dataset_length(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        total = super().__len__()
        if self._dispatch and not self.layout.even_batches and self._skippable is not None:
            inner = self._skippable.batch_sampler
            size, sampler = getattr(inner, "batch_size", None), getattr(inner, "sampler", None)
            if size and not getattr(inner, "drop_last", False) and sampler is not None and hasattr(sampler, "__len__"):
                left = len(sampler) % size
                if 0 < left <= (self.per_process_batch_size or 0) * self.layout.process_index:
                    total -= 1  # the last global batch has no rows for this process
        return total

    def set_epoch(self, epoch: int) -> None:
        """Start counting epochs at ``epoch`` (propagated to the sampler and dataset each pass)."""
        self.epoch = epoch

    def _propagate_epoch(self) -> None:
        self._loader_generator.manual_seed((self.seed or 0) + self.epoch)
        targets = [self.dataset]
        if self._skippable is not None:
            targets += [self._skippable.batch_sampler, self._skippable.sampler]
        for target in targets:
            set_epoch = getattr(target, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(self.epoch)

    def skip_next(self, num_batches: int) -> None:
        """Make the next pass start after ``num_batches`` batches (HF Accelerate's ``skip_first_batches``)."""
        if num_batches < 0:
            raise ValueError(f"num_batches={num_batches}: expected 0 or more batches to skip")
        self._skip = num_batches

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        self._propagate_epoch()
        skip, self._skip = self._skip, 0
        state = self.gradient_state
        state.begin(self)
        place = self.place
        skippable = self._skippable
        try:
            if skippable is not None and not self._dispatch:
                # The common case, in this very generator: one Python frame resumes per batch.
                skippable.skip = skip
                total, position, remainder, cursor = len(skippable), skip, self.remainder, self._cursor
                for batch in DataLoader.__iter__(self):
                    position += 1
                    cursor[0] = position
                    if position >= total:
                        self._mark_last(remainder)
                    yield place(batch) if place is not None else batch
            elif self._dispatch:
                yield from self._dispatched(skip, place)
            else:
                yield from self._without_length(skip, place)
            self.epoch += 1
            self.position = 0
        finally:
            state.end(self)

    def _mark_last(self, remainder: int) -> None:
        self.gradient_state.end_of_dataloader = True
        self.gradient_state.remainder = remainder

    def _with_length(self, skip: int, place: Callable[[Any], Any] | None) -> Iterator[Any]:
        """What ``__iter__`` does inline, as a generator of its own (the dispatching rank 0 reads through it)."""
        assert self._skippable is not None
        self._skippable.skip = skip
        total, position = len(self._skippable), skip
        for batch in DataLoader.__iter__(self):
            position += 1
            self._cursor[0] = position
            if position >= total:
                self._mark_last(self.remainder)
            yield place(batch) if place is not None else batch

    def _without_length(self, skip: int, place: Callable[[Any], Any] | None) -> Iterator[Any]:
        # The end is known only by reading one batch ahead.
        iterator = super().__iter__()
        position = 0
        for _ in range(skip):
            if next(iterator, _END) is _END:
                self._cursor[0] = position
                return
            position += 1
        current = next(iterator, _END)
        while current is not _END:
            following = next(iterator, _END)
            position += 1
            self._cursor[0] = position
            if following is _END:
                shard = self._iterable_shard
                # The shard knows how many items were real once its stream ended (in this process only).
                remainder = shard.remainder if shard is not None and self.num_workers == 0 else -1
                self._mark_last(remainder)
            yield place(current) if place is not None else current
            current = following

    def _dispatched(self, skip: int, place: Callable[[Any], Any] | None) -> Iterator[Any]:
        """Rank 0 reads each global batch and broadcasts it; every process keeps its rows."""
        layout = self.layout
        state = self.gradient_state
        rows = self.per_process_batch_size or 0
        start = rows * layout.process_index
        source: Iterator[Any] | None = None
        if layout.process_index == 0:
            source = self._with_length(skip, None) if self._skippable is not None else self._without_length(skip, None)

        def fetch() -> tuple[Any, bool, int]:
            # Rank 0 reads one global batch ahead; the flags it set belong to that batch, not to the current one.
            batch = next(source, _END)  # type: ignore[arg-type]
            fetched = (None if batch is _END else batch, state.end_of_dataloader, state.remainder)
            state.end_of_dataloader, state.remainder = False, -1
            return fetched

        ahead = fetch() if source is not None else (None, True, -1)
        position = skip
        while True:
            message: tuple[Any, ...] = (None, True, -1, -1)
            if source is not None:
                batch, last, remainder = ahead
                # The rows of the following batch when it is the last one (-1 otherwise).
                last_rows = -1
                if batch is not None and not last:
                    ahead = fetch()
                    if ahead[1] and ahead[0] is not None:
                        last_rows = _rows(ahead[0])
                message = (batch, last, remainder, last_rows)
            batch, last, remainder, last_rows = layout.broadcast(*message)
            if batch is None:
                return
            position += 1
            self._cursor[0] = position
            size = _rows(batch)
            wanted = rows * layout.num_processes
            if size < wanted and layout.even_batches:
                remainder = size
                batch = _take_rows(batch, [i % size for i in range(wanted)])
                size = wanted
            if last:
                self._mark_last(remainder if size == wanted else -1)
            elif not layout.even_batches and 0 <= last_rows <= start:
                self._mark_last(-1)  # the last global batch has no rows for this process: this one is its last
            if start < size:
                mine = _take_rows(batch, list(range(start, min(start + rows, size))))
                yield place(mine) if place is not None else mine
            if last:
                return

    def state_dict(self) -> dict[str, int]:
        """Epoch, position and shuffle seed, for checkpoints."""
        return {"epoch": self.epoch, "position": self.position, "seed": -1 if self.seed is None else self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`: the next pass is the saved epoch, in its saved order."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        seed = int(state["seed"])
        if seed >= 0 and self._skippable is not None:
            self.seed = seed
            sampler = self._skippable.sampler
            if isinstance(sampler, SeededRandomSampler):
                sampler.seed = seed


_END = object()


def _rows(batch: Any) -> int:
    """The number of rows (first dimension) of a collated batch."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        if all(not isinstance(b, (torch.Tensor, list, tuple, dict)) for b in batch):
            return len(batch)
        return _rows(batch[0])
    if isinstance(batch, dict) and batch:
        return _rows(next(iter(batch.values())))
    raise TypeError(f"dispatch_batches cannot find the rows of a batch of type {type(batch).__name__}")


def _take_rows(batch: Any, index: list[int]) -> Any:
    """The given rows of a collated batch (tensors and lists of samples; other leaves are kept)."""
    if isinstance(batch, torch.Tensor):
        return batch[torch.tensor(index, dtype=torch.long)]
    if isinstance(batch, (list, tuple)):
        if all(not isinstance(b, (torch.Tensor, list, tuple, dict)) for b in batch):
            return type(batch)(batch[i] for i in index) if not hasattr(batch, "_fields") else batch
        if hasattr(batch, "_fields"):
            return type(batch)(*(_take_rows(b, index) for b in batch))
        return type(batch)(_take_rows(b, index) for b in batch)
    if isinstance(batch, dict):
        return type(batch)({k: _take_rows(v, index) for k, v in batch.items()})
    return batch


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

        kwargs = {k: getattr(dataloader, k) for k in _LOADER_KWARGS if hasattr(dataloader, k)}
        if kwargs.get("num_workers", 0) == 0:
            kwargs.pop("prefetch_factor", None)
        return DataLoader(dataloader.dataset, batch_sampler=_Once(), generator=dataloader.generator, **kwargs)
    raise TypeError(
        f"skip_first_batches got {type(dataloader).__name__}: expected a DataLoader "
        f"(prepared with accelerator.prepare, or a map-style torch DataLoader)"
    )
