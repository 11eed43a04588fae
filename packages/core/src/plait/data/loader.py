"""The prepared dataloader: this process's batches, a resumable position, end-of-epoch detection, placement.

Exact resume rests on three facts: the shuffle order of epoch ``e`` is a pure
function of ``(seed, e)``; starting an epoch never draws from the global torch
RNG (so dropout continues identically after a resume); and the epoch counter is
shared by the dataloader and every view ``skip_first_batches`` returns of it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import BatchSampler, DataLoader, IterableDataset

from plait.data.dispatch import dispatched
from plait.data.placement import unplaced
from plait.data.samplers import SeededRandomSampler, SkippableBatchSampler, loader_kwargs, with_seeded_sampler
from plait.data.sharding import BatchSamplerShard, IterableDatasetShard, check_split

if TYPE_CHECKING:
    from plait.training.gradient_state import GradientState

_END = object()


@dataclass(frozen=True)
class ShardLayout:
    """How a prepared loader shares data among processes (HF Accelerate's options)."""

    num_processes: int = 1
    process_index: int = 0
    split_batches: bool = False
    even_batches: bool = True
    #: Rank 0 reads every global batch and sends each process its rows.
    dispatch_batches: bool = False
    #: The shuffling seed (``DataLoaderConfiguration(data_seed=...)``); ``None``: drawn at prepare.
    data_seed: int | None = None
    #: ``DataLoaderConfiguration(use_stateful_dataloader=True)``: after ``load_state_dict`` the next pass
    #: resumes after the batches the saved pass had consumed (torchdata's ``StatefulDataLoader``'s way),
    #: so no ``skip_first_batches`` is needed.
    stateful: bool = False
    #: ``share([obj])`` returns rank 0's objects on every process (a broadcast).
    share: Callable[[list[Any]], list[Any]] | None = None

    @classmethod
    def of(cls, accelerator: Any) -> ShardLayout:
        """The layout an Accelerator's options give (what a backend's ``plait_wrap_dataloader`` starts from)."""
        return cls(
            num_processes=accelerator.num_processes,
            process_index=accelerator.process_index,
            split_batches=accelerator.split_batches,
            even_batches=accelerator.even_batches,
            dispatch_batches=accelerator.config.dispatch_batches,
            data_seed=accelerator.config.data_seed,
            stateful=bool(accelerator.dataloader_config.use_stateful_dataloader),
            share=accelerator.collectives.broadcast_object_list,
        )

    def broadcast(self, *objects: Any) -> list[Any]:
        if self.num_processes == 1 or self.share is None:
            return list(objects)
        return self.share(list(objects))


class DataLoaderShard(DataLoader[Any]):
    """The dataloader ``prepare`` returns: this process's batches, on the device, with a resumable position.

    ``len()`` is the number of batches per epoch for this process. ``epoch`` counts
    completed passes (HF Accelerate's ``iteration``); ``position`` counts the
    batches consumed in the current pass.
    """

    def __init__(
        self,
        dataloader: DataLoader[Any],
        gradient_state: GradientState,
        place: Callable[[Any], Any] | None,
        layout: ShardLayout | None = None,
    ) -> None:
        layout = layout or ShardLayout()
        n = layout.num_processes
        kwargs = loader_kwargs(dataloader)
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
            batch_sampler, seed = with_seeded_sampler(dataloader)
            # Every process must shuffle alike, or their shards overlap: rank 0's seed wins.
            if seed is not None:
                self.seed = layout.data_seed if layout.data_seed is not None else int(layout.broadcast(seed)[0])
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
        #: Batches the last complete pass yielded (``None`` before the first one ends), for the hang reports.
        self.last_pass_batches: int | None = None
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

    def describe_position(self) -> str:
        """Where this loader stands, in words (``"5 batches yielded in epoch 0"``): the collectives' timeout
        and debug reports say it of each process, so uneven batches show."""
        if self.position or self in self.gradient_state.active_dataloaders:
            return f"{self.position} batches yielded in epoch {self.epoch}"
        if self.last_pass_batches is not None:
            return f"epoch {self.epoch - 1} finished after {self.last_pass_batches} batches"
        return "not started"

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
                preemption = state.preemption  # armed by accelerator.resume(): SIGTERM saves between two steps
                for batch in DataLoader.__iter__(self):
                    if preemption is not None and state.sync_gradients:
                        preemption.at_step_boundary()
                    position += 1
                    cursor[0] = position
                    if position >= total:
                        self._mark_last(remainder)
                    yield place(batch) if place is not None else batch
            elif self._dispatch:
                source = None
                if self.layout.process_index == 0:
                    source = self._with_length(skip, None) if skippable is not None else self._without_length(skip, None)
                rows = self.per_process_batch_size or 0
                yield from dispatched(source, self.layout, state, rows, skip, self._cursor, place)
            else:
                yield from self._without_length(skip, place)
            self.last_pass_batches = self.position
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
        state, preemption = self.gradient_state, self.gradient_state.preemption
        while current is not _END:
            if preemption is not None and state.sync_gradients:
                preemption.at_step_boundary()
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

    def state_dict(self) -> dict[str, int]:
        """Epoch, position and shuffle seed, for checkpoints."""
        return {"epoch": self.epoch, "position": self.position, "seed": -1 if self.seed is None else self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`: the next pass is the saved epoch, in its saved order (with
        ``stateful``, from the saved position on)."""
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        if self.layout.stateful:
            self._skip = self.position
        seed = int(state["seed"])
        if seed >= 0 and self._skippable is not None:
            self.seed = seed
            sampler = self._skippable.sampler
            if isinstance(sampler, SeededRandomSampler):
                sampler.seed = seed


