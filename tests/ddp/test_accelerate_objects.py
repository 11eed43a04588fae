"""HF Accelerate's objects and methods on 2 real processes (gloo), checked against numbers.

``DataLoaderConfiguration`` shares batches as the old arguments did, ``DistributedDataParallelKwargs``
reach the DDP module (PowerSGD included), ``sync_each_batch`` and ``trigger_sync_in_backward``
all-reduce gradients on micro-steps that would not, ``set_trigger`` on rank 1 is seen by rank 0,
``join_uneven_inputs`` finishes uneven ranks, ``InitProcessGroupKwargs(timeout=)`` bounds the wait
for a stalled rank.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import accelerate_workers as W
from ddp_helpers import SCRIPTS, clean_environment, free_port, start_plain, wait_all  # noqa: F401

from plait.testing import run_processes


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    return run_processes(W.objects_worker, 2)


def test_split_batches_from_the_dataloader_configuration_gives_each_rank_half_of_every_batch(ranks):
    assert ranks[0]["split"] == [[0, 1], [4, 5], [8, 9], [12, 13]]
    assert ranks[1]["split"] == [[2, 3], [6, 7], [10, 11], [14, 15]]
    assert all(r["split"] == r["split_old"] for r in ranks)
    # even_batches=False: 10 samples in global batches of 6: the last one is not completed with repeats.
    assert ranks[0]["uneven"] == [[0, 1, 2], [6, 7, 8]] and ranks[1]["uneven"] == [[3, 4, 5], [9]]


def test_distributed_data_parallel_kwargs_reach_the_ddp_module(ranks):
    assert all(r["find_unused"] for r in ranks)
    torch.testing.assert_close(ranks[0]["branchy_used"], ranks[1]["branchy_used"], atol=0, rtol=0)


def test_power_sgd_trains_and_keeps_the_ranks_identical(ranks):
    losses = ranks[0]["powersgd_losses"]
    assert losses[-1] < losses[0]
    assert ranks[0]["powersgd_losses"] == ranks[1]["powersgd_losses"]
    for name, value in ranks[0]["powersgd_params"].items():
        torch.testing.assert_close(value, ranks[1]["powersgd_params"][name], atol=0, rtol=0)


def test_sync_each_batch_and_trigger_sync_in_backward_all_reduce_on_a_micro_step(ranks):
    # Without sync_each_batch the micro-step keeps each rank's own gradient: the oracle can fail.
    assert not torch.equal(ranks[0]["grad_after_micro_step_False"], ranks[1]["grad_after_micro_step_False"])
    torch.testing.assert_close(ranks[0]["grad_after_micro_step_True"], ranks[1]["grad_after_micro_step_True"])
    # The averaged gradient is the mean of the two local ones.
    mean = (ranks[0]["grad_after_micro_step_False"] + ranks[1]["grad_after_micro_step_False"]) / 2
    torch.testing.assert_close(ranks[0]["grad_after_micro_step_True"], mean, atol=1e-6, rtol=0)
    # (The accumulation runs divided the loss by their 2 steps; the triggered run has 1.)
    torch.testing.assert_close(ranks[0]["grad_triggered"], 2 * mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(ranks[1]["grad_triggered"], 2 * mean, atol=1e-6, rtol=0)


def test_a_trigger_set_on_rank_1_is_seen_by_rank_0_once(ranks):
    assert ranks[0]["triggers"] == ranks[1]["triggers"] == [False, True, False]


def test_join_uneven_inputs_lets_uneven_ranks_finish_with_identical_parameters():
    results = run_processes(W.join_worker, 2)
    for name, value in results[0]["params"].items():
        torch.testing.assert_close(value, results[1]["params"][name], atol=0, rtol=0)
    # even_batches=False for the duration: 14 samples, no repeats, 3 batches on rank 0 and 2 on rank 1;
    # afterwards the loader's own setting again: 3 batches each, completed with repeated samples.
    assert sorted(x for r in results for batch in r["batches"] for x in batch) == [float(i) for i in range(14)]
    assert [len(r["batches"]) for r in results] == [3, 2]
    assert [len(r["after"]) for r in results] == [3, 3]


def test_init_process_group_kwargs_timeout_bounds_the_wait_for_a_stalled_rank():
    port = str(free_port())
    envs = [{"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            for r in range(2)]
    processes = start_plain(SCRIPTS / "ddp_dying_rank.py", envs, ["stall", "handler"])
    try:
        start = time.monotonic()
        [(code0, output0)] = wait_all(processes[:1], timeout=60)
        elapsed = time.monotonic() - start
    finally:
        processes[1].kill()
        processes[1].communicate()
    assert "process 0 enters a collective" in output0, output0[-3000:]
    assert code0 != 0 and "UNREACHABLE" not in output0
    assert elapsed < 30, f"process 0 took {elapsed:.0f} s to fail (the default timeout is 30 minutes)"
