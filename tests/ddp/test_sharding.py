"""Sharded dataloaders on 2 and 3 real processes, sample by sample, against HF Accelerate's rules.

Every expectation comes from :func:`reference`, written here from HF Accelerate's
documented rules (``BatchSamplerShard``, ``IterableDatasetShard``), never from
plait's own sharding code; a few literal cases pin the reference itself.

Launching processes costs seconds, so each (process count, dispatch) pair is
launched once, lazily, and runs every case (``sharding_workers.run_cases``); the
tests below only compare what came back.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from plait.testing import run_processes

_spec = importlib.util.spec_from_file_location("plait_tests_sharding_workers", Path(__file__).with_name("sharding_workers.py"))
assert _spec is not None and _spec.loader is not None
workers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workers)

pytestmark = pytest.mark.slow

PROCESS_COUNTS = (2, 3)
SIZES = (1, 4, 7, 10, 12, 13)
BATCHES = {2: (2, 3, 4), 3: (2, 3, 4, 6)}


# --------------------------------------------------------------------------- #
# The reference: HF Accelerate's rules, written independently of plait
# --------------------------------------------------------------------------- #
def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _padded(real: list[int], size: int, source: list[int]) -> list[int]:
    """``real`` completed to ``size`` items by cycling through ``source`` (the epoch's first indices)."""
    filler = itertools.cycle(source)
    return real + [next(filler) for _ in range(size - len(real))]


def reference(
    samples: list[int], batch: int, processes: int, *, split: bool = False, even: bool = True,
    drop_last: bool = False, iterable: bool = False,
) -> tuple[list[list[list[int]]], list[int]]:
    """Each rank's batches, and the real samples of the epoch in global order (what gather_for_metrics returns).

    Map-style, not split: the loader's batches are dealt in rounds of ``processes``,
    batch ``k*N + r`` to rank ``r``. A round that is short (fewer than N batches, or
    a short last batch) is dropped with ``drop_last``; with ``even`` its samples are
    completed to N full batches with indices from the start of the epoch (the first
    N*batch indices, cycled); otherwise rank ``r`` gets the round's batch ``r`` if any.

    Map-style, split: every batch is cut into N slices of ``batch // N``; a short last
    batch is completed from the epoch's first batch (``even``), or each rank takes
    what its slice holds (not ``even``).

    Iterable: the stream is buffered ``batch * N`` items at a time (``batch`` when
    split) and each rank keeps its slice; a short last buffer is completed from the
    first buffer unless ``drop_last`` (``even`` does not apply, as in HF Accelerate).
    """
    n = processes
    ranks: list[list[list[int]]] = [[] for _ in range(n)]
    real: list[int] = []
    if iterable:
        size = batch if split else batch * n
        part = batch // n if split else batch
        streams: list[list[int]] = [[] for _ in range(n)]
        for buffer in _chunks(samples, size):
            if len(buffer) < size:
                if drop_last:
                    break
                real += buffer
                buffer = _padded(buffer, size, samples[:size])
            else:
                real += buffer
            for r in range(n):
                streams[r] += buffer[r * part : (r + 1) * part]
        return [_chunks(stream, part) for stream in streams], real
    batches = _chunks(samples, batch)
    if drop_last and batches and len(batches[-1]) < batch:
        batches.pop()
    if split:
        part = batch // n
        for b in batches:
            real += b
            if len(b) < batch and even:
                b = _padded(b, batch, samples[:batch])
            for r in range(n):
                if len(b) > r * part:
                    ranks[r].append(b[r * part : (r + 1) * part])
        return ranks, real
    for start in range(0, len(batches), n):
        round_ = batches[start : start + n]
        if len(round_) == n and len(round_[-1]) == batch:
            for r in range(n):
                ranks[r].append(round_[r])
            real += [i for b in round_ for i in b]
            continue
        if drop_last:
            break
        flat = [i for b in round_ for i in b]
        real += flat
        if even:
            completed = _chunks(_padded(flat, n * batch, samples[: n * batch]), batch)
            for r in range(n):
                ranks[r].append(completed[r])
        else:
            for r in range(min(n, len(round_))):
                ranks[r].append(round_[r])
    return ranks, real


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 0, 1]]]),
        ({"even": False}, [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]),
        ({"drop_last": True}, [[[0, 1, 2]], [[3, 4, 5]]]),
        ({"split": True, "batch": 4}, [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [0, 1]]]),
        ({"iterable": True}, [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 0, 1]]]),
        ({"iterable": True, "drop_last": True}, [[[0, 1, 2]], [[3, 4, 5]]]),
        ({"iterable": True, "split": True, "batch": 4}, [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [0, 1]]]),
    ],
)
def test_the_reference_gives_hf_accelerates_documented_examples(kwargs, expected):
    kwargs = dict(kwargs)
    batch = kwargs.pop("batch", 3)
    assert reference(list(range(10)), batch, 2, **kwargs)[0] == expected


def test_the_reference_on_three_processes():
    # Round 1 holds only [9]: it is completed with 0, 1 and then the next indices of the epoch's start.
    assert reference(list(range(10)), 3, 3)[0] == [[[0, 1, 2], [9, 0, 1]], [[3, 4, 5], [2, 3, 4]], [[6, 7, 8], [5, 6, 7]]]
    assert reference(list(range(10)), 3, 3, even=False)[0] == [[[0, 1, 2], [9]], [[3, 4, 5]], [[6, 7, 8]]]
    # Fewer samples than one round: the epoch's indices are cycled as often as needed.
    assert reference([0], 2, 3)[0] == [[[0, 0]], [[0, 0]], [[0, 0]]]


# --------------------------------------------------------------------------- #
# The cases every launch runs
# --------------------------------------------------------------------------- #
def _name(data: str, n: int, batch: int, mode: str, drop_last: bool) -> str:
    return f"{data}-n{n}-b{batch}-{mode}{'-drop' if drop_last else ''}"


def plain_cases(processes: int) -> list[dict[str, Any]]:
    cases = []
    for n, batch in itertools.product(SIZES, BATCHES[processes]):
        data = "tensor" if n in (7, 13) else "list"
        modes = [("default", False), ("uneven", False), ("default", True)]
        if batch % processes == 0:
            modes += [("split", False), ("split_uneven", False), ("split", True)]
        for mode, drop_last in modes:
            even = mode in ("default", "split")
            cases.append({
                "kind": "plain", "name": _name(data, n, batch, mode, drop_last), "data": data, "n": n,
                "batch": batch, "mode": mode, "drop_last": drop_last, "gather": even, "objects": even,
            })
        modes = [("default", False), ("default", True)] + ([("split", False)] if batch % processes == 0 else [])
        if n == 10:
            modes.append(("uneven", False))  # even_batches does not apply to iterable datasets
        for mode, drop_last in modes:
            cases.append({
                "kind": "plain", "name": _name("iterable", n, batch, mode, drop_last), "data": "iterable",
                "n": n, "batch": batch, "mode": mode, "drop_last": drop_last, "gather": mode != "uneven",
                "objects": mode != "uneven",
            })
    # Two epochs of one loader: the second is the same as the first.
    cases.append({"kind": "plain", "name": "list-n10-b3-default-2epochs", "data": "list", "n": 10, "batch": 3,
                  "mode": "default", "gather": True, "epochs": 2})
    cases.append({"kind": "plain", "name": "sized_iterable-n10-b3-default", "data": "sized_iterable", "n": 10,
                  "batch": 3, "mode": "default"})
    return cases


def special_cases(processes: int) -> list[dict[str, Any]]:
    bad = 3 if processes == 2 else 4  # a batch size the process count does not divide
    return [
        {"kind": "shuffle", "name": "shuffle", "n": 13, "batch": 2},
        {"kind": "skip", "name": "skip-list", "data": "list", "n": 13, "batch": 2, "skip": 1},
        {"kind": "skip", "name": "skip-shuffled", "data": "list", "n": 13, "batch": 2, "skip": 2, "shuffle": True},
        {"kind": "skip", "name": "skip-split-shuffled", "data": "list", "n": 13, "batch": processes * 2, "skip": 1,
         "shuffle": True, "mode": "split"},
        {"kind": "skip", "name": "skip-iterable", "data": "iterable", "n": 13, "batch": 2, "skip": 1},
        {"kind": "epoch_stream", "name": "epoch-stream", "n": 10, "batch": 2},
        {"kind": "error", "name": "split-error-list", "data": "list", "n": 10, "batch": bad, "mode": "split"},
        {"kind": "error", "name": "split-error-iterable", "data": "iterable", "n": 10, "batch": bad, "mode": "split"},
        {"kind": "subset", "name": "subset-sampler", "n": 20, "batch": 3, "indices": [0, 2, 4, 6, 8, 10, 12]},
    ]


def dispatch_cases(processes: int) -> list[dict[str, Any]]:
    keep = {10, 12, 13}
    cases = [
        c for c in plain_cases(processes)
        if c["n"] in keep and c["batch"] in (2, 3, processes * 2) and c["data"] != "sized_iterable"
        and c["mode"] != "split_uneven"
    ]
    return [
        *cases,
        {"kind": "shuffle", "name": "shuffle", "n": 13, "batch": 2},
        {"kind": "skip", "name": "skip-shuffled", "data": "list", "n": 13, "batch": 2, "skip": 2, "shuffle": True},
        {"kind": "skip", "name": "skip-iterable", "data": "iterable", "n": 13, "batch": 2, "skip": 1},
    ]


def cases_for(processes: int, dispatch: bool) -> list[dict[str, Any]]:
    return dispatch_cases(processes) if dispatch else plain_cases(processes) + special_cases(processes)


def _settings(tmp: Path, dispatch: bool) -> dict[str, str]:
    settings = {"XDG_CONFIG_HOME": str(tmp), "PLAIT_PROCESS_GROUP_TIMEOUT": "60"}
    if dispatch:
        settings["PLAIT_DISPATCH_BATCHES"] = "1"
    return settings


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """``launched(processes, dispatch)``: every rank's results, from one launch per pair (made on first use)."""
    done: dict[tuple[int, bool], list[dict[str, Any]]] = {}

    def get(processes: int, dispatch: bool) -> list[dict[str, Any]]:
        key = (processes, dispatch)
        if key not in done:
            settings = _settings(tmp_path_factory.mktemp("config"), dispatch)
            ranks = run_processes(workers.run_cases, processes, args=(cases_for(processes, dispatch), settings),
                                  env=settings)
            assert [r["rank"] for r in ranks] == list(range(processes))
            assert all(r["world"] == processes and r["dispatch"] == dispatch for r in ranks)
            done[key] = ranks
        return done[key]

    return get


def _each_rank(launched, processes: int, dispatch: bool, name: str) -> list[dict[str, Any]]:
    return [rank["results"][name] for rank in launched(processes, dispatch)]


def _expected(case: dict[str, Any], processes: int) -> tuple[list[list[list[int]]], list[int]]:
    mode = case["mode"]
    return reference(
        list(range(case["n"])), case["batch"], processes, split=mode.startswith("split"),
        even=mode in ("default", "split"), drop_last=case.get("drop_last", False),
        iterable=case["data"] in ("iterable", "sized_iterable"),
    )


def _global_batch(case: dict[str, Any], processes: int) -> int:
    return case["batch"] if case["mode"].startswith("split") else case["batch"] * processes


def _padded_last_round(case: dict[str, Any], processes: int) -> bool:
    """Whether the epoch ends with a round that padding completes."""
    if case.get("drop_last") or case["mode"] not in ("default", "split"):
        return False
    return case["n"] % _global_batch(case, processes) != 0


def _plain_params(dispatch: bool, keep: Any = None) -> list[Any]:
    """(processes, case) for every plain case (those ``keep`` accepts)."""
    params = []
    for processes in PROCESS_COUNTS:
        for case in cases_for(processes, dispatch):
            if case["kind"] != "plain" or (keep is not None and not keep(case, processes)):
                continue
            params.append(pytest.param(processes, case, id=f"{processes}p-{case['name']}"))
    return params


def _gathers(case: dict[str, Any], processes: int) -> bool:
    return bool(case.get("gather"))


def _sized(case: dict[str, Any], processes: int) -> bool:
    return case["data"] != "iterable"


# --------------------------------------------------------------------------- #
# 1, 3. Map-style and iterable datasets, every mode, sample by sample
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=False))
def test_each_rank_gets_hf_accelerates_batches(launched, processes, case):
    expected, _ = _expected(case, processes)
    for rank, result in enumerate(_each_rank(launched, processes, False, case["name"])):
        for epoch in result["epochs"]:
            assert epoch["batches"] == expected[rank], f"rank {rank}"


@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=False, keep=_sized))
def test_len_is_the_number_of_batches_each_rank_yields(launched, processes, case):
    expected, _ = _expected(case, processes)
    for rank, result in enumerate(_each_rank(launched, processes, False, case["name"])):
        assert result["len"] == len(expected[rank]) == len(result["epochs"][0]["batches"]), f"rank {rank}"


@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=False))
def test_end_of_dataloader_is_set_on_the_last_batch_only(launched, processes, case):
    for rank, result in enumerate(_each_rank(launched, processes, False, case["name"])):
        for epoch in result["epochs"]:
            count = len(epoch["batches"])
            assert epoch["ends"] == [i == count - 1 for i in range(count)], f"rank {rank}"


# --------------------------------------------------------------------------- #
# 5. gather_for_metrics: every real sample exactly once, padding dropped
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=False, keep=_gathers))
def test_gather_for_metrics_returns_each_sample_once(launched, processes, case):
    _, real = _expected(case, processes)
    for rank, result in enumerate(_each_rank(launched, processes, False, case["name"])):
        for epoch in result["epochs"]:
            assert epoch["gathered"] == real, f"rank {rank}"
            if case.get("objects"):
                assert epoch["objects"] == [f"s{i}" for i in real], f"rank {rank}"


@pytest.mark.parametrize("processes", PROCESS_COUNTS)
def test_literal_examples(launched, processes):
    """The brief's own numbers, spelled out (10 samples)."""
    got = {name: [r["epochs"][0]["batches"] for r in _each_rank(launched, processes, False, name)]
           for name in ("list-n10-b3-default", "list-n10-b3-uneven", "list-n10-b3-default-drop",
                        "iterable-n10-b3-default", "iterable-n10-b3-default-drop")}
    if processes == 2:
        assert got["list-n10-b3-default"] == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 0, 1]]]
        assert got["list-n10-b3-uneven"] == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]
        assert got["list-n10-b3-default-drop"] == [[[0, 1, 2]], [[3, 4, 5]]]
        assert got["iterable-n10-b3-default"] == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 0, 1]]]
        assert got["iterable-n10-b3-default-drop"] == [[[0, 1, 2]], [[3, 4, 5]]]
        split = [r["epochs"][0]["batches"] for r in _each_rank(launched, 2, False, "list-n10-b4-split")]
        assert split == [[[0, 1], [4, 5], [8, 9]], [[2, 3], [6, 7], [0, 1]]]
        gathered = _each_rank(launched, 2, False, "iterable-n10-b3-default")[0]["epochs"][0]["gathered"]
        assert gathered == list(range(10))  # HF Accelerate returns 12 items here
    else:
        assert got["list-n10-b3-default"] == [[[0, 1, 2], [9, 0, 1]], [[3, 4, 5], [2, 3, 4]], [[6, 7, 8], [5, 6, 7]]]
        assert got["list-n10-b3-uneven"] == [[[0, 1, 2], [9]], [[3, 4, 5]], [[6, 7, 8]]]
        assert got["list-n10-b3-default-drop"] == [[[0, 1, 2]], [[3, 4, 5]], [[6, 7, 8]]]


# --------------------------------------------------------------------------- #
# 2. Shuffled loaders
# --------------------------------------------------------------------------- #
def _global_order(per_rank: list[list[list[int]]], total: int) -> list[int]:
    """The sampler's order, read back from the ranks' batches round by round (padding only comes last)."""
    rounds = max(len(batches) for batches in per_rank)
    order = [i for k in range(rounds) for batches in per_rank if k < len(batches) for i in batches[k]]
    return order[:total]


def _check_shuffled_epoch(
    per_rank: list[list[list[int]]], n: int, batch: int, processes: int, dispatch: bool = False
) -> list[int]:
    order = _global_order(per_rank, n)
    assert sorted(order) == list(range(n)), "the ranks' shards overlap or miss samples"
    expected = reference(order, batch, processes)[0]
    if dispatch and n % (batch * processes):  # the padded round: see test_dispatch_pads_the_last_round_...
        per_rank, expected = [b[:-1] for b in per_rank], [b[:-1] for b in expected]
    assert per_rank == expected, "padding is not taken from the epoch's start"
    return order


@pytest.mark.parametrize("dispatch", [False, True], ids=["sharded", "dispatch"])
@pytest.mark.parametrize("processes", PROCESS_COUNTS)
def test_shuffled_shards_partition_the_dataset_in_a_new_order_each_epoch(launched, processes, dispatch):
    ranks = _each_rank(launched, processes, dispatch, "shuffle")
    if not dispatch:
        assert len({r["seed"] for r in ranks}) == 1, "ranks seeded differently and the seed was not shared"
    orders = []
    for epoch in range(3):
        per_rank = [r["divergent"][epoch]["batches"] for r in ranks]
        assert all(r["len"] == len(per_rank[0]) for r in ranks)
        order = _check_shuffled_epoch(per_rank, 13, 2, processes, dispatch)
        for r in ranks:
            assert r["divergent"][epoch]["gathered"] == order
        orders.append(order)
    assert orders[0] != list(range(13))
    assert len({tuple(o) for o in orders}) == 3, "the order repeats between epochs"


@pytest.mark.parametrize("dispatch", [False, True], ids=["sharded", "dispatch"])
@pytest.mark.parametrize("processes", PROCESS_COUNTS)
def test_set_seed_makes_the_shuffle_reproducible(launched, processes, dispatch):
    ranks = _each_rank(launched, processes, dispatch, "shuffle")
    for r in ranks:
        first = [e["batches"] for e in r["seed42"]]
        assert first == [e["batches"] for e in r["seed42_again"]]
        assert first[0] != first[1]
        assert first[0] != r["seed43"][0]["batches"]
    for epoch in range(2):
        _check_shuffled_epoch([r["seed42"][epoch]["batches"] for r in ranks], 13, 2, processes, dispatch)


# --------------------------------------------------------------------------- #
# 6. skip_first_batches and set_epoch
# --------------------------------------------------------------------------- #
_SKIP_CASES = ["skip-list", "skip-shuffled", "skip-split-shuffled", "skip-iterable"]


@pytest.mark.parametrize(
    ("processes", "dispatch", "name"),
    [(p, False, name) for p in PROCESS_COUNTS for name in _SKIP_CASES]
    + [(p, True, name) for p in PROCESS_COUNTS for name in ("skip-shuffled", "skip-iterable")],
)
def test_skip_first_batches_skips_this_ranks_first_batches_and_the_epoch_goes_on(launched, processes, dispatch, name):
    case = next(c for c in cases_for(processes, dispatch) if c["name"] == name)
    skip = case["skip"]
    ranks = _each_rank(launched, processes, dispatch, name)
    for rank, r in enumerate(ranks):
        full = [e["batches"] for e in r["uninterrupted"]]
        if not case.get("shuffle") and not dispatch:
            iterable = case["data"] == "iterable"
            assert full[0] == reference(list(range(case["n"])), case["batch"], processes, iterable=iterable)[0][rank]
        assert r["skipped"]["batches"] == full[0][skip:], f"rank {rank}"
        if case["data"] != "iterable":
            assert r["view_len"] == len(full[0]) - skip
        assert r["epoch_after_skip"] == 1
        assert r["following"]["batches"] == full[1], f"rank {rank}: the epoch after a skipped one"
        assert r["epoch_after_next"] == 2
        assert r["set_epoch_1"]["batches"] == full[1], f"rank {rank}: set_epoch(1)"
        assert r["epoch_after_set_epoch"] == 2
        count = len(r["skipped"]["batches"])
        assert r["skipped"]["ends"] == [i == count - 1 for i in range(count)]
        if case.get("shuffle"):
            assert full[0] != full[1]
        # What gather_for_metrics returns after the skip: the rest of the epoch, each sample once.
        everything = r["uninterrupted"][0]["gathered"]
        assert sorted(everything) == list(range(case["n"]))
        split = case.get("mode") == "split"
        skipped_samples = skip * case["batch"] * (1 if split else processes)
        assert r["skipped"]["gathered"] == everything[skipped_samples:], f"rank {rank}"
        assert r["following"]["gathered"] == r["uninterrupted"][1]["gathered"]


@pytest.mark.parametrize("processes", PROCESS_COUNTS)
def test_set_epoch_reaches_an_iterable_dataset(launched, processes):
    ranks = _each_rank(launched, processes, False, "epoch-stream")
    for rank, r in enumerate(ranks):
        assert r["seen"] == [0, 1, 5]
        assert r["epoch"] == 6
        for epoch, batches in zip((0, 1, 5), r["passes"]):
            stream = [(i + epoch) % 10 for i in range(10)]
            assert batches == reference(stream, 2, processes, iterable=True)[0][rank], f"rank {rank}, epoch {epoch}"


# --------------------------------------------------------------------------- #
# 7. Bad input
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("name", ["split-error-list", "split-error-iterable"])
@pytest.mark.parametrize("processes", PROCESS_COUNTS)
def test_split_batches_with_an_indivisible_batch_fails_on_every_rank(launched, processes, name):
    bad = 3 if processes == 2 else 4
    for r in _each_rank(launched, processes, False, name):
        assert r["error"] == "ConfigError"
        message = r["message"]
        assert re.search(rf"\b{bad}\b", message) and re.search(rf"\b{processes}\b", message), message
        assert "split_batches" in message


def test_split_batches_with_an_indivisible_batch_fails_the_launch(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    settings = _settings(tmp_path, dispatch=False)
    with pytest.raises(ChildFailedError) as failure:
        run_processes(workers.split_fails, 2, args=(settings,), env=settings)
    text = str(failure.value)
    assert "ConfigError" in text
    assert "batch of 3 samples into 2 equal parts" in text


# --------------------------------------------------------------------------- #
# 4. dispatch_batches: rank 0 reads, every rank gets the sharded mode's samples
# --------------------------------------------------------------------------- #
def _dispatch_expected(case: dict[str, Any], processes: int) -> tuple[list[list[list[int]]], list[int]]:
    """The sharded mode's samples; but rank 0 reads an iterable dataset like a map-style one (even_batches applies)."""
    if case["mode"] == "uneven":
        return reference(list(range(case["n"])), case["batch"], processes, even=False, drop_last=case["drop_last"])
    return _expected(case, processes)


@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=True))
def test_dispatch_gives_the_sharded_modes_samples_before_the_padded_round(launched, processes, case):
    expected, _ = _dispatch_expected(case, processes)
    cut = -1 if _padded_last_round(case, processes) else None
    for rank, result in enumerate(_each_rank(launched, processes, True, case["name"])):
        batches = result["epochs"][0]["batches"]
        assert len(batches) == len(expected[rank]), f"rank {rank}"
        assert batches[:cut] == expected[rank][:cut], f"rank {rank}"


@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=True, keep=_padded_last_round))
def test_dispatch_pads_the_last_round_like_the_sharded_mode(launched, processes, case):
    expected, _ = _dispatch_expected(case, processes)
    for rank, result in enumerate(_each_rank(launched, processes, True, case["name"])):
        assert result["epochs"][0]["batches"][-1] == expected[rank][-1], f"rank {rank}"


@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=True, keep=_sized))
def test_dispatch_len_is_the_number_of_batches_each_rank_yields(launched, processes, case):
    expected, _ = _dispatch_expected(case, processes)
    for rank, result in enumerate(_each_rank(launched, processes, True, case["name"])):
        assert result["len"] == len(expected[rank]) == len(result["epochs"][0]["batches"]), f"rank {rank}"


@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=True))
def test_dispatch_end_of_dataloader_is_set_on_the_last_batch_only(launched, processes, case):
    for rank, result in enumerate(_each_rank(launched, processes, True, case["name"])):
        count = len(result["epochs"][0]["batches"])
        assert result["epochs"][0]["ends"] == [i == count - 1 for i in range(count)], f"rank {rank}"


@pytest.mark.parametrize(("processes", "case"), _plain_params(dispatch=True, keep=_gathers))
def test_dispatch_gather_for_metrics_returns_each_sample_once(launched, processes, case):
    _, real = _dispatch_expected(case, processes)
    for rank, result in enumerate(_each_rank(launched, processes, True, case["name"])):
        assert result["epochs"][0]["gathered"] == real, f"rank {rank}"
        if case.get("objects"):
            assert result["epochs"][0]["objects"] == [f"s{i}" for i in real], f"rank {rank}"


# --------------------------------------------------------------------------- #
# Beyond the brief: a sampler that visits only part of the dataset
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("processes", PROCESS_COUNTS)
def test_gather_for_metrics_with_a_subset_sampler(launched, processes):
    indices = [0, 2, 4, 6, 8, 10, 12]
    expected, real = reference(indices, 3, processes)
    for rank, r in enumerate(_each_rank(launched, processes, False, "subset-sampler")):
        assert r["epochs"][0]["batches"] == expected[rank]
        assert r["epochs"][0]["gathered"] == real, f"rank {rank}"
