"""Worker functions for test_sharding.py, run on N real processes by ``plait.testing.run_processes``.

A launch costs seconds, so one call runs every case of a test module and returns
plain data (lists of sample ids, lengths, messages); the tests compare it with
an independent reference. Nothing here computes an expectation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset


class RangeStream(IterableDataset):
    """An iterable dataset yielding ``0..n-1`` (no ``__len__``)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Iterator[int]:
        yield from range(self.n)


class SizedRangeStream(RangeStream):
    """The same stream with a ``__len__``."""

    def __len__(self) -> int:
        return self.n


class EpochStream(IterableDataset):
    """Yields ``0..n-1`` rotated by the epoch it was last told; records every ``set_epoch`` call."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0
        self.seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.seen.append(epoch)

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            yield (i + self.epoch) % self.n


def _ids(batch: Any) -> list[int]:
    """The sample ids of a collated batch (a tensor, or a TensorDataset's ``[tensor]``)."""
    if isinstance(batch, torch.Tensor):
        return [int(v) for v in batch.reshape(-1).tolist()]
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return _ids(batch[0])
    raise TypeError(f"unexpected batch {batch!r}")


def _loader(data: str, n: int, batch: int, drop_last: bool = False, shuffle: bool = False, **kwargs: Any) -> DataLoader:
    if data == "list":
        dataset: Any = list(range(n))
    elif data == "tensor":
        dataset = TensorDataset(torch.arange(n))
    elif data == "iterable":
        dataset = RangeStream(n)
    elif data == "sized_iterable":
        dataset = SizedRangeStream(n)
    else:
        raise ValueError(data)
    return DataLoader(dataset, batch_size=batch, drop_last=drop_last, shuffle=shuffle, **kwargs)


def _length(loader: Any) -> Any:
    try:
        return len(loader)
    except TypeError as exc:  # an unsized iterable dataset has no length; kept as text for the test to judge
        return f"TypeError: {exc}"


def _epoch(accelerator: Any, loader: Any, gather: bool = False, objects: bool = False) -> dict[str, Any]:
    """One pass: this rank's batches, end-of-dataloader flags, and what gather_for_metrics returned."""
    batches: list[list[int]] = []
    ends: list[bool] = []
    gathered: list[int] = []
    gathered_objects: list[str] = []
    for batch in loader:
        ids = _ids(batch)
        batches.append(ids)
        ends.append(bool(accelerator.gradient_state.end_of_dataloader))
        if gather:
            gathered.extend(_ids(accelerator.gather_for_metrics(batch)))
        if objects:
            gathered_objects.extend(accelerator.gather_for_metrics([f"s{i}" for i in ids], use_gather_object=True))
    return {"batches": batches, "ends": ends, "gathered": gathered, "objects": gathered_objects}


def _isolate(settings: Mapping[str, str]) -> None:
    """No PLAIT_* variable of the caller's shell leaks in; only ``settings`` apply."""
    for name in [k for k in os.environ if k.startswith("PLAIT_")]:
        del os.environ[name]
    os.environ.update(settings)


class _Accelerators:
    """One Accelerator per mode, made on first use (they share the one process group)."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    def __getitem__(self, mode: str) -> Any:
        if mode not in self._made:
            from plait import Accelerator

            kwargs = {"default": {}, "uneven": {"even_batches": False}, "split": {"split_batches": True},
                      "split_uneven": {"split_batches": True, "even_batches": False}}[mode]
            self._made[mode] = Accelerator(**kwargs)
        return self._made[mode]


def _plain_case(accelerators: _Accelerators, case: Mapping[str, Any]) -> dict[str, Any]:
    accelerator = accelerators[case["mode"]]
    loader = accelerator.prepare(_loader(case["data"], case["n"], case["batch"], case.get("drop_last", False)))
    result = {"len": _length(loader), "epochs": []}
    for _ in range(case.get("epochs", 1)):
        result["epochs"].append(_epoch(accelerator, loader, case.get("gather", False), case.get("objects", False)))
    return result


def _shuffle_case(accelerators: _Accelerators, case: Mapping[str, Any]) -> dict[str, Any]:
    """Shuffled map-style loaders: rank-specific seeds before prepare, then set_seed reproducibility."""
    from plait import set_seed

    accelerator = accelerators["default"]
    rank = accelerator.process_index
    n, batch = case["n"], case["batch"]
    # Every rank's global RNG differs: the loaders must still agree (rank 0's seed is broadcast).
    torch.manual_seed(1000 + 17 * rank)
    loader = accelerator.prepare(_loader("list", n, batch, shuffle=True))
    divergent = [_epoch(accelerator, loader, gather=True) for _ in range(3)]

    def passes(seed: int, count: int) -> list[dict[str, Any]]:
        set_seed(seed)
        prepared = accelerator.prepare(_loader("list", n, batch, shuffle=True))
        return [_epoch(accelerator, prepared) for _ in range(count)]

    return {
        "len": len(loader),
        "seed": loader.seed,
        "divergent": divergent,
        "seed42": passes(42, 2),
        "seed42_again": passes(42, 2),
        "seed43": passes(43, 1),
    }


def _skip_case(accelerators: _Accelerators, case: Mapping[str, Any]) -> dict[str, Any]:
    """skip_first_batches on a prepared loader, and set_epoch, against an uninterrupted loader."""
    from plait import set_seed

    mode = case.get("mode", "default")
    accelerator = accelerators[mode]
    data, n, batch, skip, shuffle = case["data"], case["n"], case["batch"], case["skip"], case.get("shuffle", False)
    gather = mode in ("default", "split")

    set_seed(7)
    reference = accelerator.prepare(_loader(data, n, batch, shuffle=shuffle))
    uninterrupted = [_epoch(accelerator, reference, gather=gather) for _ in range(2)]

    set_seed(7)
    resumed = accelerator.prepare(_loader(data, n, batch, shuffle=shuffle))
    view = accelerator.skip_first_batches(resumed, skip)
    view_len = _length(view)
    skipped = _epoch(accelerator, view, gather=gather)
    epoch_after_skip = resumed.epoch
    following = _epoch(accelerator, resumed, gather=gather)

    set_seed(7)
    jumped = accelerator.prepare(_loader(data, n, batch, shuffle=shuffle))
    jumped.set_epoch(1)
    at_epoch_one = _epoch(accelerator, jumped)
    return {
        "uninterrupted": uninterrupted,
        "view_len": view_len,
        "skipped": skipped,
        "epoch_after_skip": epoch_after_skip,
        "epoch_after_next": resumed.epoch,
        "following": following,
        "set_epoch_1": at_epoch_one,
        "epoch_after_set_epoch": jumped.epoch,
    }


def _epoch_stream_case(accelerators: _Accelerators, case: Mapping[str, Any]) -> dict[str, Any]:
    """set_epoch reaches an iterable dataset through the shard, each pass, and after loader.set_epoch."""
    accelerator = accelerators["default"]
    dataset = EpochStream(case["n"])
    loader = accelerator.prepare(DataLoader(dataset, batch_size=case["batch"]))
    first = _epoch(accelerator, loader)["batches"]
    second = _epoch(accelerator, loader)["batches"]
    loader.set_epoch(5)
    fifth = _epoch(accelerator, loader)["batches"]
    return {"seen": list(dataset.seen), "passes": [first, second, fifth], "epoch": loader.epoch}


def _error_case(accelerators: _Accelerators, case: Mapping[str, Any]) -> dict[str, Any]:
    """prepare must refuse; the error is caught here so that every rank's message comes back."""
    accelerator = accelerators[case["mode"]]
    try:
        accelerator.prepare(_loader(case["data"], case["n"], case["batch"]))
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None, "message": ""}


def _subset_case(accelerators: _Accelerators, case: Mapping[str, Any]) -> dict[str, Any]:
    """A loader whose sampler visits only some of the dataset's indices."""
    accelerator = accelerators["default"]
    loader = accelerator.prepare(
        DataLoader(list(range(case["n"])), batch_size=case["batch"], sampler=list(case["indices"]))
    )
    return {"len": len(loader), "epochs": [_epoch(accelerator, loader, gather=True)]}


_KINDS = {
    "plain": _plain_case,
    "shuffle": _shuffle_case,
    "skip": _skip_case,
    "epoch_stream": _epoch_stream_case,
    "error": _error_case,
    "subset": _subset_case,
}


def run_cases(cases: Sequence[Mapping[str, Any]], settings: Mapping[str, str]) -> dict[str, Any]:
    """Run every case on this rank; return ``{"rank", "world", "dispatch", "results": {name: result}}``."""
    _isolate(settings)
    accelerators = _Accelerators()
    default = accelerators["default"]
    results = {case["name"]: _KINDS[case["kind"]](accelerators, case) for case in cases}
    default.wait_for_everyone()
    return {
        "rank": default.process_index,
        "world": default.num_processes,
        "dispatch": default.config.dispatch_batches,
        "results": results,
    }


def split_fails(settings: Mapping[str, str]) -> None:
    """split_batches with a batch size the process count does not divide: prepare raises, the launch fails."""
    _isolate(settings)
    from plait import Accelerator

    accelerator = Accelerator(split_batches=True)
    accelerator.prepare(DataLoader(list(range(10)), batch_size=3))
