"""``plait.state``, ``plait.utils``' collectives, ``plait.logging``, ``LocalSGD`` and the launchers on 2 real
processes (gloo).

Two runs for the module: ``scripts/state_worker.py`` under ``python -m torch.distributed.run
--nproc-per-node 2`` (PartialState before any Accelerator, then a ddp Accelerator), and
``scripts/launch_worker.py``, a plain process playing the notebook, which launches a training
function with ``notebook_launcher`` and ``debug_launcher``. The references are computed here
with plain torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import ddp_workers as W
from ddp_helpers import SCRIPTS, clean_environment, identical, max_diff  # noqa: F401

from plait.testing import run_script

sys.path.insert(0, str(SCRIPTS))
import state_worker as S


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("state")
    run_script(SCRIPTS / "state_worker.py", 2, args=[str(out)], timeout=300)
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r, result in enumerate(results):
        result["log"] = (out / f"log{r}.txt").read_text().splitlines()
    return results


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("launched")
    done = subprocess.run([sys.executable, str(SCRIPTS / "launch_worker.py"), str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    results: dict[str, Any] = {"parent": json.loads((out / "parent.json").read_text()), "stdout": done.stdout}
    for launcher in ("notebook", "debug"):
        results[launcher] = [torch.load(out / f"{launcher}_rank{r}.pt", weights_only=False) for r in range(2)]
    results["refused_files"] = sorted(p.name for p in out.glob("refused_*"))
    return results


# --------------------------------------------------------------------------- PartialState


def test_partial_state_without_an_accelerator_gives_each_process_its_rank(ranks):
    for r, out in enumerate(ranks):
        assert (out["process_index"], out["local_process_index"], out["num_processes"]) == (r, r, 2)
        assert out["is_main_process"] is (r == 0) and out["is_last_process"] is (r == 1)
        assert out["use_distributed"] is True and out["distributed_type"] == "MULTI_CPU"
        assert out["backend"] == "gloo" and out["device"] == "cpu"


def test_an_accelerator_after_partial_state_joins_its_group(ranks):
    for r, out in enumerate(ranks):
        assert out["accelerator_backend"] == "ddp" and out["accelerator_process_index"] == r
        assert out["partial_type_after"] == out["accelerator_type"] == "MULTI_CPU"
        assert out["state_is_accelerator_s"] is True


def test_split_between_processes_as_hf_accelerate(ranks):
    # HF Accelerate's documented example, and a share of 7 items: the first process gets the extra one;
    # padding repeats the input's last item.
    expected = [
        {"abc": ["A", "B"], "abc_padded": ["A", "B"], "seven": [0, 1, 2, 3], "seven_padded": [0, 1, 2, 3],
         "dict": {"a": [0, 1, 2], "b": ["a", "b", "c"]}},
        {"abc": ["C"], "abc_padded": ["C", "C"], "seven": [4, 5, 6], "seven_padded": [4, 5, 6, 6],
         "dict": {"a": [3, 4], "b": ["d", "e"]}},
    ]
    for out, wanted in zip(ranks, expected):
        for key, value in wanted.items():
            assert out[key] == value, key
        assert out["tensor"] == wanted["seven"] and out["tensor_padded"] == wanted["seven_padded"]


# --------------------------------------------------------------------------- plait.utils' collectives


def test_gather_broadcast_and_objects(ranks):
    for out in ranks:
        assert out["gather"].tolist() == [0, 10, 1, 11]
        assert out["gather_nested"]["a"].tolist() == [0.0, 0.0, 1.0, 1.0]
        assert out["gather_nested"]["b"][0].tolist() == [0.0, 1.0]  # 0-d tensors: one element per process
        assert out["gather_object"] == [{"rank": 0}, {"rank": 1}]
        assert out["broadcast"].tolist() == [1.0, 1.0, 1.0]
        assert out["broadcast_object_list"] == ["from 1", 1]


def test_reduce(ranks):
    x = [torch.tensor([1.0, 0.0]), torch.tensor([2.0, -2.0])]
    for r, out in enumerate(ranks):
        assert out["reduce_default"].tolist() == ((x[0] + x[1]) / 2).tolist() == [1.5, -1.0]  # the mean
        assert out["reduce_sum_scaled"].tolist() == [1.5, -1.0]  # (3, -2) * 0.5
        assert out["reduce_max"].tolist() == [2.0, 0.0]
        assert torch.equal(out["reduce_input_after"], x[r])  # the input is left alone


def test_pad_across_processes(ranks):
    assert ranks[0]["pad"].tolist() == [[1.0, 1.0], [-1.0, -1.0]]
    assert ranks[0]["pad_first"].tolist() == [[-1.0, -1.0], [1.0, 1.0]]
    for out in ranks:  # the longest one is left as it is
        assert out["pad"].shape == (2, 2)
    assert ranks[1]["pad"].tolist() == ranks[1]["pad_first"].tolist() == [[2.0, 2.0], [2.0, 2.0]]


def test_synchronize_rng_states_gives_every_process_rank_0_s_generators(ranks):
    assert not torch.equal(ranks[0]["rng_before"], ranks[1]["rng_before"])  # seeded differently first
    torch.manual_seed(100)
    assert torch.equal(ranks[0]["rng_draw"], torch.rand(4))
    assert torch.equal(ranks[1]["rng_draw"], ranks[0]["rng_draw"])
    rank0_generator = torch.rand(4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ranks[0]["generator_draw"], rank0_generator)
    assert torch.equal(ranks[1]["generator_draw"], rank0_generator)


def test_get_logger_logs_on_the_main_process_unless_told(ranks):
    messages = [[line.split(" ", 1)[1] for line in out["log"]] for out in ranks]
    assert messages[0] == ["[RANK 0] main only", "[RANK 0] every process", "[RANK 0] in order"]
    assert messages[1] == ["[RANK 1] every process", "[RANK 1] in order"]
    # in_order: rank 1 waits for the (late) main process to log first.
    logged_at = [float(out["log"][-1].split(" ", 1)[0]) for out in ranks]
    assert logged_at[1] >= logged_at[0]


# --------------------------------------------------------------------------- LocalSGD


def local_sgd_reference() -> tuple[list[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]:
    """Two replicas in plain torch, each on its own batches, averaged every LOCAL_SGD_STEPS steps and at the end:
    every step's parameters of both replicas, and the final (averaged) ones."""
    x, y = W.make_data()
    models = [W.make_model(), W.make_model()]
    optimizers = [torch.optim.SGD(m.parameters(), lr=W.LR) for m in models]

    def average() -> None:
        with torch.no_grad():
            for p0, p1 in zip(models[0].parameters(), models[1].parameters()):
                mean = (p0 + p1) / 2
                p0.copy_(mean)
                p1.copy_(mean)

    history = []
    for step in range(S.STEPS):
        for rank, (model, optimizer) in enumerate(zip(models, optimizers)):
            batch = S.local_batch(step, rank)
            nn.functional.mse_loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
            optimizer.zero_grad()
        if (step + 1) % S.LOCAL_SGD_STEPS == 0:
            average()
        history.append([W.params(m) for m in models])
    average()
    return history, W.params(models[0])


def test_local_sgd_trains_locally_and_averages_every_k_steps(ranks):
    history, final = local_sgd_reference()
    rank0, rank1 = ranks
    assert rank0["local_sgd_enabled"] and rank1["local_sgd_enabled"]
    for step in range(S.STEPS):
        for r, out in enumerate(ranks):
            assert max_diff(out["local_sgd_steps"][step], history[step][r]) < 1e-6, (step, r)
        synced = (step + 1) % S.LOCAL_SGD_STEPS == 0
        if synced:  # averaged: the same on both processes, the mean of the two local replicas
            assert identical(rank0["local_sgd_steps"][step], rank1["local_sgd_steps"][step]), step
        else:  # between averages gradients were not synchronised: each process has its own replica
            assert max_diff(rank0["local_sgd_steps"][step], rank1["local_sgd_steps"][step]) > 1e-4, step
    # Leaving the block averages once more (after the 7th step, which is not a multiple of 3).
    assert identical(rank0["local_sgd_exit"], rank1["local_sgd_exit"])
    assert max_diff(rank0["local_sgd_exit"], final) < 1e-6
    assert max_diff(rank0["local_sgd_exit"], history[-1][0]) > 1e-4


# --------------------------------------------------------------------------- notebook_launcher, debug_launcher


@pytest.mark.parametrize("launcher", ["notebook", "debug"])
def test_a_launched_pair_trains_as_one_process_on_the_doubled_batch(launched, launcher):
    rank0, rank1 = launched[launcher]
    parent_pid = launched["parent"]["pid"]
    for r, result in enumerate((rank0, rank1)):
        info = result["info"]
        assert (info["process_index"], info["num_processes"], info["partial_state_index"]) == (r, 2, r)
        assert info["backend"] == "ddp" and info["distributed_type"] == "MULTI_CPU" and info["device"] == "cpu"
        assert info["env"]["RANK"] == str(r) and info["env"]["LOCAL_RANK"] == str(r)
        assert info["env"]["WORLD_SIZE"] == info["env"]["LOCAL_WORLD_SIZE"] == "2"
        assert info["env"]["MASTER_ADDR"] == "127.0.0.1" and info["env"]["PLAIT_MIXED_PRECISION"] == "no"
        assert info["mixed_precision"] == "no" and info["pid"] != parent_pid
    assert (rank0["info"]["env"]["PLAIT_CPU"] == "true") is (launcher == "debug")
    assert identical(rank0["params"], rank1["params"]), "the two replicas diverged"
    # 2 processes of 8 samples per step are one process of 16.
    assert max_diff(rank0["params"], W.reference_sgd(W.make_model(), batch_size=16)) < 1e-6
    assert max_diff(rank0["params"], W.reference_sgd(W.make_model(), batch_size=8)) > 1e-3


def test_the_launchers_leave_the_parent_alone_and_refuse_a_parent_with_an_accelerator(launched):
    parent = launched["parent"]
    assert parent["env_after"] == {"RANK": None, "WORLD_SIZE": None}
    assert parent["refused"] is not None and "Accelerator was already created" in parent["refused"]
    assert launched["refused_files"] == []
    assert "Launching training on 2 processes." in launched["stdout"]
