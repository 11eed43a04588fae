"""Collectives of ``Accelerator`` on 2 and 3 real processes (gloo), over nested lists/tuples/dicts of tensors.

One launch per process count (the 2-process one with ``PLAIT_DEBUG=1``, which adds
the shape check that turns a mismatched collective into an error on every rank).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import ddp_workers as W
from ddp_helpers import clean_environment  # noqa: F401

from plait.testing import run_processes


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """2 processes with PLAIT_DEBUG=1 (every collective first compares shapes across processes)."""
    directory = tmp_path_factory.mktemp("collectives2")
    return run_processes(W.collectives_worker, 2, args=(str(directory),), env={"PLAIT_DEBUG": "1"})


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """3 processes, without debug."""
    directory = tmp_path_factory.mktemp("collectives3")
    return run_processes(W.collectives_worker, 3, args=(str(directory),))


@pytest.fixture(params=["two", "three"], ids=["2-processes", "3-processes"])
def ranks(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return request.getfixturevalue(request.param)


def test_process_properties(ranks: list[dict[str, Any]]) -> None:
    n = len(ranks)
    for r, out in enumerate(ranks):
        assert out["rank_env"] == r
        assert out["process_index"] == r
        assert out["local_process_index"] == r  # one machine
        assert out["num_processes"] == n
        assert out["is_main_process"] is (r == 0)
        assert out["is_local_main_process"] is (r == 0)
        assert out["is_last_process"] is (r == n - 1)
        assert out["use_distributed"] is True


def test_gather_concatenates_in_rank_order_keeping_the_structure(ranks: list[dict[str, Any]]) -> None:
    n = len(ranks)
    for out in ranks:
        gathered = out["gather"]
        assert isinstance(gathered, dict) and list(gathered) == ["a", "b"]
        assert isinstance(gathered["b"], list) and isinstance(gathered["b"][1], tuple)
        assert gathered["a"].tolist() == [v for r in range(n) for v in (r, r + 10)]
        assert torch.equal(gathered["b"][0], torch.cat([torch.full((2, 3), float(r)) for r in range(n)]))
        # 0-d tensors become 1-d, one element per process.
        assert gathered["b"][1][0].shape == (n,)
        assert gathered["b"][1][0].tolist() == [2.0 * r for r in range(n)]


def test_reduce_sum_mean_max(ranks: list[dict[str, Any]]) -> None:
    n = len(ranks)
    x = [torch.tensor([r + 1.0, -2.0 * r]) for r in range(n)]
    y = [torch.tensor(float(r)) for r in range(n)]
    expected = {
        "reduce_sum": (sum(x), sum(y)),
        "reduce_mean": (sum(x) / n, sum(y) / n),
        "reduce_max": (torch.stack(x).max(0).values, torch.stack(y).max()),
        "reduce_sum_scaled": (sum(x) * 0.5, sum(y) * 0.5),
    }
    for r, out in enumerate(ranks):
        for key, (ex, ey) in expected.items():
            result = out[key]
            assert isinstance(result["y"], list) and isinstance(result["y"][0], tuple)
            assert torch.allclose(result["x"], ex), key
            assert torch.allclose(result["y"][0][0], ey), key
            assert result["y"][0][0].shape == ()
        # The input is left as it was.
        assert torch.equal(out["reduce_input_after"]["x"], x[r])
        assert torch.equal(out["reduce_input_after"]["y"][0][0], y[r])


def test_pad_across_processes(ranks: list[dict[str, Any]]) -> None:
    n = len(ranks)
    for r, out in enumerate(ranks):
        real = torch.full((r + 1, 2), float(r + 1))
        filler = torch.full((n - r - 1, 2), -1.0)
        assert torch.equal(out["pad"], torch.cat([real, filler]))
        assert torch.equal(out["pad_first"], torch.cat([filler, real]))
        padded = out["pad_dim1"]["t"]
        assert padded.shape == (2, n)
        assert torch.equal(padded, torch.cat([torch.ones(2, r + 1), torch.zeros(2, n - r - 1)], dim=1))
        gathered = out["pad_then_gather"]
        assert isinstance(gathered, list) and gathered[0].shape == (n * n, 2)
        for q in range(n):
            block = gathered[0][q * n : (q + 1) * n]
            assert torch.equal(block[: q + 1], torch.full((q + 1, 2), float(q + 1)))
            assert (block[q + 1 :] == -1).all()


def test_broadcast(ranks: list[dict[str, Any]]) -> None:
    for out in ranks:
        assert torch.equal(out["broadcast_from_1"]["t"], torch.full((3,), 1.0))
        assert out["broadcast_from_1"]["l"][0].tolist() == [1, 1]
        assert out["broadcast_from_0"].tolist() == [0.0]
        assert out["broadcast_object_list"] == ["from 1", {"rank": 1}]
        assert out["broadcast_object_list_0"] == [0]


def test_gather_object(ranks: list[dict[str, Any]]) -> None:
    n = len(ranks)
    for out in ranks:
        assert out["gather_object"] == [{"rank": r} for r in range(n)]
        assert out["gather_object_list"] == [v for r in range(n) for v in (r, r * 10)]  # lists are concatenated


def _hf_split(items: list[int], r: int, n: int, pad: bool) -> list[int]:
    """HF Accelerate's split_between_processes: contiguous, the first processes get the extras,
    padding with the input's last element."""
    per, extra = divmod(len(items), n)
    start = r * per + min(r, extra)
    share = items[start : start + per + (1 if r < extra else 0)]
    if pad:
        share = share + [items[-1]] * (per + (1 if extra else 0) - len(share))
    return share


def test_split_between_processes(ranks: list[dict[str, Any]]) -> None:
    n = len(ranks)
    items = list(range(7))
    shares = [out["split_list"] for out in ranks]
    assert [v for share in shares for v in share] == items  # contiguous, in rank order, nothing lost
    for r, out in enumerate(ranks):
        assert out["split_list"] == _hf_split(items, r, n, pad=False)
        assert out["split_list_padded"] == _hf_split(items, r, n, pad=True)
        assert len(out["split_list_padded"]) == -(-7 // n)
        assert out["split_tensor"].tolist() == _hf_split(items, r, n, pad=False)
        assert out["split_tensor_padded"].tolist() == _hf_split(items, r, n, pad=True)
        share = _hf_split(items, r, n, pad=False)
        assert out["split_dict"] == {"a": share, "b": ["abcdefg"[i] for i in share]}


def test_main_process_first(ranks: list[dict[str, Any]]) -> None:
    _, main_left = ranks[0]["main_first_times"]
    for r, out in enumerate(ranks):
        assert out["main_first_read"] == "made once", f"process {r} entered before the main process wrote"
        if r > 0:
            entered, _ = out["main_first_times"]
            assert entered >= main_left


def test_wait_for_everyone(ranks: list[dict[str, Any]]) -> None:
    last_arrival = max(out["barrier_times"][0] for out in ranks)
    assert last_arrival - min(out["barrier_times"][0] for out in ranks) > 0.1  # the worker staggers arrivals
    for out in ranks:
        assert out["barrier_times"][1] >= last_arrival


def test_on_process_decorators(ranks: list[dict[str, Any]]) -> None:
    n = len(ranks)
    for r, out in enumerate(ranks):
        expected = [
            "main" if r == 0 else None,
            "process1" if r == 1 else None,
            "last" if r == n - 1 else None,
            "local_main" if r == 0 else None,
            "decorated_later" if r == n - 1 else None,
        ]
        assert out["decorator_results"] == expected
        assert out["ran"] == [e for e in expected if e is not None]


def test_mismatched_shapes_are_an_error_on_every_rank_with_debug(two: list[dict[str, Any]]) -> None:
    for out in two:
        gather = out["debug_gather_error"]
        assert gather is not None and gather.startswith("ValueError"), gather
        assert "gather" in gather and "rank 0 (1, 2)" in gather and "rank 1 (2, 2)" in gather
        reduce = out["debug_reduce_error"]
        assert reduce is not None and reduce.startswith("ValueError")
        assert "reduce" in reduce and "rank 0 (3,)" in reduce and "rank 1 (4,)" in reduce
        broadcast = out["debug_broadcast_error"]
        assert broadcast is not None and broadcast.startswith("ValueError")
        assert "float32" in broadcast and "float64" in broadcast
        # The group is still usable afterwards.
        assert out["after_debug_errors"].tolist() == [0, 1]
