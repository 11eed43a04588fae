"""Each process's share of the batches, with HF Accelerate's semantics (so its users get the same numbers).

Map-style datasets: the global stream of batches is dealt out in rounds, batch
``k*N + r`` to process ``r``. The last, incomplete round is dropped with
``drop_last``; with ``even_batches`` (the default) it is completed with indices
from the start of the epoch, so every process gets the same number of full
batches; otherwise each process gets what the round holds for it.

With ``split_batches`` every global batch is cut into ``N`` equal slices instead.

Iterable datasets: each process reads the stream, buffers ``batch_size * N``
items (``batch_size`` when splitting) and keeps its slice; a short last buffer is
completed from the first one unless ``drop_last``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, Sampler

from plait.errors import ConfigError


def check_split(batch_size: int | None, num_processes: int) -> None:
    """``split_batches`` needs a batch size that the number of processes divides."""
    if batch_size is None or batch_size % num_processes != 0:
        raise ConfigError(
            f"split_batches=True cuts each batch of {batch_size} samples into {num_processes} equal parts, "
            f"but {batch_size} is not a multiple of {num_processes}: use a batch size divisible by "
            f"{num_processes}, or split_batches=False"
        )


def _cycle(indices: list[Any]) -> Iterator[Any]:
    while True:
        yield from indices


class BatchSamplerShard(Sampler[list[int]]):
    """This process's batches of a batch sampler (see the module docstring for the rules)."""

    def __init__(
        self,
        batch_sampler: Any,
        num_processes: int,
        process_index: int,
        split_batches: bool = False,
        even_batches: bool = True,
    ) -> None:
        self.batch_sampler = batch_sampler
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.even_batches = even_batches
        self.batch_size: int | None = getattr(batch_sampler, "batch_size", None)
        self.drop_last = bool(getattr(batch_sampler, "drop_last", False))
        if split_batches:
            check_split(self.batch_size, num_processes)

    @property
    def sampler(self) -> Any:
        return getattr(self.batch_sampler, "sampler", None)

    def set_epoch(self, epoch: int) -> None:
        for target in (self.batch_sampler, self.sampler):
            if hasattr(target, "set_epoch"):
                target.set_epoch(epoch)

    def __len__(self) -> int:
        total = len(self.batch_sampler)
        if self.split_batches:
            if self.even_batches or self.drop_last or not self.batch_size or not hasattr(self.sampler, "__len__"):
                return total
            left = len(self.sampler) % self.batch_size
            part = self.batch_size // self.num_processes
            # The short last batch reaches only the processes whose slice starts inside it.
            return total - 1 if 0 < left <= part * self.process_index else total
        rounds, left = divmod(total, self.num_processes)
        if left == 0 or self.drop_last:
            return rounds
        if self.even_batches:
            return rounds + 1
        return rounds + (1 if self.process_index < left else 0)

    def __iter__(self) -> Iterator[list[int]]:
        return self._iter_split() if self.split_batches else self._iter_rounds()

    def _iter_rounds(self) -> Iterator[list[int]]:
        n, rank, size = self.num_processes, self.process_index, self.batch_size
        first: list[Any] = []  # the epoch's first indices, to complete the last round with
        round_: list[list[Any]] = []
        for batch in self.batch_sampler:
            if len(first) < n * (size or 1):
                first.extend(batch if size is not None else [batch])
            round_.append(list(batch))
            if len(round_) == n and (size is None or len(round_[-1]) == size):
                yield round_[rank]
                round_ = []
        if not round_ or self.drop_last:
            return
        if not self.even_batches:
            if rank < len(round_):
                yield round_[rank]
            return
        if size is None:
            filler = _cycle(first)
            while len(round_) < n:
                round_.append(next(filler))
            yield round_[rank]
            return
        filler = _cycle(first)
        if len(round_[-1]) < size:
            round_[-1].extend(next(filler) for _ in range(size - len(round_[-1])))
        while len(round_) < n:
            round_.append([next(filler) for _ in range(size)])
        yield round_[rank]

    def _iter_split(self) -> Iterator[list[int]]:
        size = self.batch_size or 0
        part = size // self.num_processes
        start, stop = part * self.process_index, part * (self.process_index + 1)
        first: list[Any] = []
        for batch in self.batch_sampler:
            if not first:
                first = list(batch)
            if len(batch) == size:
                yield list(batch[start:stop])
                continue
            # The short last batch (only without drop_last).
            if not self.even_batches:
                if len(batch) > start:
                    yield list(batch[start:stop])
                return
            filler = _cycle(first)
            batch = list(batch) + [next(filler) for _ in range(size - len(batch))]
            yield batch[start:stop]


class IterableDatasetShard(IterableDataset[Any]):
    """This process's items of an iterable dataset: its slice of every buffer of ``batch_size * N`` items."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int,
        num_processes: int,
        process_index: int,
        split_batches: bool = False,
        drop_last: bool = False,
    ) -> None:
        if split_batches:
            check_split(batch_size, num_processes)
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.split_batches = split_batches
        self.drop_last = drop_last
        #: Real (not repeated) items in the last buffer of the latest pass; -1 until known.
        self.remainder = -1

    @property
    def buffer_size(self) -> int:
        return self.batch_size if self.split_batches else self.batch_size * self.num_processes

    @property
    def process_batch_size(self) -> int:
        return self.batch_size // self.num_processes if self.split_batches else self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        """Items this process yields per pass (a TypeError, as torch expects, when the dataset has no length)."""
        buffers, left = divmod(len(self.dataset), self.buffer_size)
        if left and not self.drop_last:
            buffers += 1
        return buffers * self.process_batch_size

    def __iter__(self) -> Iterator[Any]:
        size, part = self.buffer_size, self.process_batch_size
        start, stop = part * self.process_index, part * (self.process_index + 1)
        self.remainder = -1
        first: list[Any] | None = None
        buffer: list[Any] = []
        for item in self.dataset:
            buffer.append(item)
            if len(buffer) == size:
                yield from buffer[start:stop]
                if first is None:
                    first = buffer
                buffer = []
        if buffer and not self.drop_last:
            self.remainder = len(buffer)
            filler = _cycle(first if first is not None else list(buffer))
            buffer.extend(next(filler) for _ in range(size - len(buffer)))
            yield from buffer[start:stop]
        else:
            self.remainder = 0
