"""``join_uneven_inputs``: processes with different numbers of batches train together (torch's ``Join``)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.accelerator import Accelerator


@contextlib.contextmanager
def join_uneven_inputs(accelerator: Accelerator, joinables: list[Any], even_batches: bool | None) -> Iterator[None]:
    """Inside, a process that runs out of batches keeps answering the collectives of the
    ``joinables`` (DistributedDataParallel models, ZeroRedundancyOptimizers) until every process is
    done; ``even_batches`` replaces the prepared dataloaders' setting for the duration (``False``
    gives each process only its own samples, without the repeated ones that even them out)."""
    if accelerator.num_processes == 1:
        yield  # one process: nothing to join
        return
    saved: list[tuple[Any, bool]] = []
    if even_batches is None:
        even_batches = accelerator.even_batches
    else:
        for dataloader in accelerator.prepared.dataloaders:
            sampler = getattr(getattr(dataloader, "batch_sampler", None), "batch_sampler", None)
            if sampler is None or not hasattr(sampler, "even_batches"):
                warnings.warn(
                    f"join_uneven_inputs(even_batches={even_batches}) cannot change a dataloader over an iterable "
                    f"dataset or with dispatch_batches; it keeps its setting", stacklevel=3,
                )
                continue
            saved.append((sampler, sampler.even_batches))
            sampler.even_batches = even_batches
    if not all(hasattr(j, "join_hook") for j in joinables):
        bad = [type(j).__qualname__ for j in joinables if not hasattr(j, "join_hook")]
        raise TypeError(
            f"join_uneven_inputs got {', '.join(bad)}, which torch's Join cannot join: pass the prepared "
            f"DistributedDataParallel models (backend ddp) and ZeroRedundancyOptimizers"
        )
    from torch.distributed.algorithms.join import Join

    # Uneven inputs are legitimate here: debug's check before backward (which the processes that ran out no
    # longer call; Join answers their gradient all-reduce) is off for the duration.
    collectives, uneven = accelerator.collectives, accelerator.collectives.uneven_inputs
    collectives.uneven_inputs = not even_batches
    try:
        with Join(joinables, enable=not even_batches, throw_on_early_termination=False):
            yield
    finally:
        collectives.uneven_inputs = uneven
        for sampler, value in saved:
            sampler.even_batches = value
