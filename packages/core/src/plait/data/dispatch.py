"""``dispatch_batches``: rank 0 reads every global batch and broadcasts it; each process keeps its rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from plait.data.loader import ShardLayout
    from plait.training.gradient_state import GradientState

_END = object()


def dispatched(
    source: Iterator[Any] | None,
    layout: ShardLayout,
    state: GradientState,
    rows: int,
    skip: int,
    cursor: list[int],
    place: Callable[[Any], Any] | None,
) -> Iterator[Any]:
    """This process's rows of every global batch.

    :param source: rank 0's global batches (reading it sets ``state``'s end-of-dataloader flags);
        ``None`` on the other ranks.
    :param layout: how the processes share the data (its ``broadcast`` sends rank 0's objects).
    :param state: the gradient state whose end-of-dataloader flags this pass sets.
    :param rows: the rows of a batch per process.
    :param skip: batches already skipped (the position starts there).
    :param cursor: the loader's position, updated in place.
    :param place: the batch placer, or ``None``.
    """
    start = rows * layout.process_index

    def fetch() -> tuple[Any, bool, int]:
        # Rank 0 reads one global batch ahead; the flags it set belong to that batch, not to the current one.
        assert source is not None
        batch = next(source, _END)
        fetched = (None if batch is _END else batch, state.end_of_dataloader, state.remainder)
        state.end_of_dataloader, state.remainder = False, -1
        return fetched

    def mark_last(remainder: int) -> None:
        state.end_of_dataloader = True
        state.remainder = remainder

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
                    last_rows = count_rows(ahead[0])
            message = (batch, last, remainder, last_rows)
        batch, last, remainder, last_rows = layout.broadcast(*message)
        if batch is None:
            return
        position += 1
        cursor[0] = position
        size = count_rows(batch)
        wanted = rows * layout.num_processes
        if size < wanted and layout.even_batches:
            remainder = size
            batch = take_rows(batch, [i % size for i in range(wanted)])
            size = wanted
        if last:
            mark_last(remainder if size == wanted else -1)
        elif not layout.even_batches and 0 <= last_rows <= start:
            mark_last(-1)  # the last global batch has no rows for this process: this one is its last
        if start < size:
            mine = take_rows(batch, list(range(start, min(start + rows, size))))
            yield place(mine) if place is not None else mine
        if last:
            return


def count_rows(batch: Any) -> int:
    """The number of rows (first dimension) of a collated batch."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (list, tuple)) and batch:
        if all(not isinstance(b, (torch.Tensor, list, tuple, dict)) for b in batch):
            return len(batch)
        return count_rows(batch[0])
    if isinstance(batch, dict) and batch:
        return count_rows(next(iter(batch.values())))
    raise TypeError(f"dispatch_batches cannot find the rows of a batch of type {type(batch).__name__}")


def take_rows(batch: Any, index: list[int]) -> Any:
    """The given rows of a collated batch (tensors and lists of samples; other leaves are kept)."""
    if isinstance(batch, torch.Tensor):
        return batch[torch.tensor(index, dtype=torch.long)]
    if isinstance(batch, (list, tuple)):
        if all(not isinstance(b, (torch.Tensor, list, tuple, dict)) for b in batch):
            return type(batch)(batch[i] for i in index) if not hasattr(batch, "_fields") else batch
        if hasattr(batch, "_fields"):
            return type(batch)(*(take_rows(b, index) for b in batch))
        return type(batch)(take_rows(b, index) for b in batch)
    if isinstance(batch, dict):
        return type(batch)({k: take_rows(v, index) for k, v in batch.items()})
    return batch
