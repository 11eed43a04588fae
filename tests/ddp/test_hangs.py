"""Hangs named: on 2 real processes (gloo) with a process-group timeout of 2 s, a timed-out barrier,
collective or DDP backward raises ``CollectiveTimeoutError`` naming the rank that did not arrive or the
other rank's operation, instead of gloo's bare "Timed out waiting 2000ms"; with ``PLAIT_DEBUG=1``
uneven batches are an error on both ranks naming each rank's count, and ``join_uneven_inputs`` still
trains them. Without debug and with even data nothing changes: test_collectives.py and test_ddp.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import hang_workers as W
from ddp_helpers import clean_environment  # noqa: F401

from plait.collectives import hangs
from plait.errors import CollectiveMismatchError
from plait.testing import run_processes

#: The longest a named timeout may take: the group's timeout, the wait for reports (as long), and slack.
BOUND = 2 * W.TIMEOUT + 3


def _named(failure: dict[str, Any]) -> str:
    assert failure["type"] == "CollectiveTimeoutError", failure
    assert failure["is_runtime_error"]
    # gloo's own error is the cause: its timeout, or the connection the other rank's timeout closed.
    assert "Timed out waiting 2000ms" in failure["cause"] or "Connection closed by peer" in failure["cause"], failure
    assert failure["seconds"] < BOUND, f"{failure['seconds']:.1f} s: the report waited too long"
    return str(failure["message"])


def test_a_rank_that_skips_a_barrier_is_named_by_the_one_that_waited() -> None:
    rank0, rank1 = run_processes(W.barrier_worker, 2)
    message = _named(rank0)
    assert rank0["operation"] == "barrier (wait_for_everyone) #2"
    assert message.startswith("rank 0 timed out in barrier (wait_for_everyone) #2 after 2 s"), message
    assert "rank 1 did not arrive: it is not waiting in any collective" in message
    assert rank0["missing"] == [1] and rank0["waiting"] == {}
    assert rank0["seconds"] >= 2 * W.TIMEOUT - 0.5  # it waited for rank 1's report before naming it
    assert rank1 == {"slept": W.STALL}


def test_ranks_in_different_collectives_name_each_other() -> None:
    rank0, rank1 = run_processes(W.mixed_worker, 2)
    message0, message1 = _named(rank0), _named(rank1)
    # The first rank to time out closes their connection: the other may see that before its own timeout.
    assert "Timed out waiting 2000ms" in rank0["cause"] + rank1["cause"]
    gave_up = "(timed out|lost its connection to another process)"
    assert re.match(f"rank 0 {gave_up} in broadcast #2 ", message0), message0
    assert re.search(f"; rank 1 {gave_up} in gather #2[;.]", message0), message0
    assert re.match(f"rank 1 {gave_up} in gather #2 ", message1), message1
    assert re.search(f"; rank 0 {gave_up} in broadcast #2[;.]", message1), message1
    for message in (message0, message1):
        assert "did not arrive" not in message and "different collectives" in message
    assert rank0["waiting"] == {1: "gather #2"} and rank1["waiting"] == {0: "broadcast #2"}
    assert rank0["missing"] == rank1["missing"] == []
    # Each saw the other's report as soon as it was written, without waiting out the grace period.
    assert max(rank0["seconds"], rank1["seconds"]) < W.TIMEOUT + 1.5


def test_a_rank_that_stops_before_backward_is_named_by_ddp_s_all_reduce() -> None:
    rank0, rank1 = run_processes(W.ddp_worker, 2)
    assert rank0["ddp"] == "DistributedDataParallel"
    message = _named(rank0)
    assert message.startswith("rank 0 timed out in backward (gradient synchronisation) "
                              "[dataloader 0: 3 batches yielded in epoch 0] after 2 s"), message
    assert "rank 1 did not arrive" in message and rank0["missing"] == [1]
    for step in (1, 2):  # the steps before the stall synchronised: equal weights on both ranks
        assert torch.equal(rank0[f"weight_{step}"], rank1[f"weight_{step}"])
    assert not torch.equal(rank0["weight_1"], rank0["weight_2"])


@pytest.fixture(scope="module")
def debug() -> list[dict[str, Any]]:
    return run_processes(W.debug_worker, 2, env={"PLAIT_DEBUG": "1"})


def test_debug_names_each_rank_s_batch_count_instead_of_hanging(debug: list[dict[str, Any]]) -> None:
    for out in debug:
        failure = out["prepared"]
        assert failure["type"] == "CollectiveMismatchError", failure
        message = failure["message"]
        assert "rank 0: backward (gradient synchronisation) #5 [dataloader 0: 5 batches yielded in epoch 0]" in message
        assert "rank 1: barrier (wait_for_everyone) #1 [after 4 backward calls; dataloader 0: epoch 0 finished after " \
               "4 batches]" in message, message
        assert "even_batches" in message and "join_uneven_inputs" in message
        assert failure["trained"] == [2] * 4  # rank 0 stopped before its 5th backward, rank 1 ran out
        assert out["after"] == [0, 1]  # both raised together: the group still works


def test_debug_names_backward_counts_of_a_loader_plait_never_saw(debug: list[dict[str, Any]]) -> None:
    for out in debug:
        failure = out["own"]
        assert failure["type"] == "CollectiveMismatchError", failure
        assert "rank 0: backward (gradient synchronisation) #3;" in failure["message"], failure["message"]
        assert "rank 1: barrier (wait_for_everyone) #1 [after 2 backward calls]" in failure["message"]


def test_debug_lets_join_uneven_inputs_train_uneven_batches(debug: list[dict[str, Any]]) -> None:
    rank0, rank1 = debug
    assert rank0["joined"] == [2] * 5 and rank1["joined"] == [2] * 4
    assert torch.equal(rank0["joined_weight"], rank1["joined_weight"])
    assert rank0["joined_uneven_flag_after"] is False


def test_only_torch_s_timeouts_count_and_ranks_are_named_in_spans() -> None:
    gloo = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 2000ms for recv operation")
    nccl = RuntimeError("Watchdog caught collective operation timeout: WorkNCCL(SeqNum=3, OpType=ALLREDUCE)")
    assert hangs.is_timeout(gloo) and hangs.is_timeout(nccl)
    closed = RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:4242")
    assert hangs.is_timeout(closed)  # the other end gave up first, or died
    assert not hangs.is_timeout(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not hangs.is_timeout(CollectiveMismatchError("rank 1 timed out"))  # plait's own errors pass through
    assert not hangs.is_timeout(ValueError("timed out"))
    assert hangs.ranks([3]) == "rank 3"
    assert hangs.ranks([7, 1, 2, 3, 4, 9]) == "ranks 1-4, 7, 9"
