"""``plait.launchers`` and ``plait.local_sgd`` in one process: a one-process launch runs here with the
mixed precision it was given, every bad argument is named, a launch refuses a parent that already
made an Accelerator, and LocalSGD does nothing on one process.

The launches of two processes and LocalSGD's averaging are tested on real processes in
tests/ddp/test_state_processes.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import plait
from plait import Accelerator, debug_launcher, notebook_launcher
from plait.local_sgd import LocalSGD

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
from state_helpers import fresh_state  # noqa: F401  (an autouse fixture)


def test_one_process_runs_here_with_the_mixed_precision_given(capsys):
    seen = []

    def train(a, b):
        accelerator = Accelerator(cpu=True)
        seen.append((a, b, os.environ.get("PLAIT_MIXED_PRECISION"), accelerator.mixed_precision, os.getpid()))

    assert "PLAIT_MIXED_PRECISION" not in os.environ
    notebook_launcher(train, args=(1, 2), num_processes=1, mixed_precision="BF16")
    assert seen == [(1, 2, "bf16", "bf16", os.getpid())]
    assert "PLAIT_MIXED_PRECISION" not in os.environ  # restored
    assert "one process" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({}, ValueError, ["num_processes=..."]),
        ({"num_processes": 0}, ValueError, ["num_processes=0", "at least 1"]),
        ({"num_processes": 2, "num_nodes": 2, "node_rank": 2}, ValueError, ["node_rank=2", "0..1"]),
        ({"num_processes": 2, "mixed_precision": "fp8"}, ValueError, ["mixed_precision='fp8'", "bf16"]),
        ({"num_processes": 2, "use_port": "http"}, ValueError, ["use_port='http'", "65535"]),
        ({"num_processes": 2, "rdzv_endpoint": "29500"}, ValueError, ["rdzv_endpoint='29500'", "host:port"]),
        ({"num_processes": 2, "rdzv_backend": "c10d"}, plait.NotSupportedError, ["rdzv_backend='c10d'", "static"]),
        ({"num_processes": 2, "max_restarts": 3}, plait.NotSupportedError, ["max_restarts=3"]),
    ],
)
def test_notebook_launcher_names_a_bad_argument(kwargs, error, words):
    with pytest.raises(error) as caught:
        notebook_launcher(lambda: pytest.fail("launched"), **kwargs)
    for word in words:
        assert word in str(caught.value)


def test_a_launcher_needs_a_function_and_processes():
    with pytest.raises(TypeError, match="not callable"):
        notebook_launcher("train", num_processes=1)
    with pytest.raises(TypeError, match="not callable"):
        debug_launcher(None)
    with pytest.raises(ValueError, match="num_processes=-1"):
        debug_launcher(print, num_processes=-1)


def test_several_processes_are_refused_after_an_accelerator_was_made_here():
    accelerator = Accelerator(cpu=True)
    with pytest.raises(ValueError, match=r"Accelerator was already created in this process.*inside the training function"):
        notebook_launcher(lambda: pytest.fail("launched"), num_processes=2)
    del accelerator


# --------------------------------------------------------------------------- LocalSGD, one process


def test_local_sgd_on_one_process_trains_as_without_it(regression):
    accelerator = Accelerator(cpu=True)
    model, optimizer, loader = accelerator.prepare(*regression.make())
    with LocalSGD(accelerator, model, local_sgd_steps=2) as local_sgd:
        assert local_sgd.enabled is False
        for x, y in loader:
            accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            local_sgd.step()
    assert local_sgd.num_steps == 8

    reference, reference_optimizer, reference_loader = regression.make()
    for x, y in reference_loader:
        torch.nn.functional.mse_loss(reference(x), y).backward()
        reference_optimizer.step()
        reference_optimizer.zero_grad()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        assert torch.equal(ours, theirs)


def test_local_sgd_refuses_bad_steps_and_sharded_runs():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="local_sgd_steps=0"):
        LocalSGD(accelerator, model, local_sgd_steps=0)
    accelerator.distributed_type = plait.DistributedType.FSDP
    with pytest.raises(NotImplementedError, match=r"LocalSGD with distributed_type=FSDP.*'ddp'"):
        LocalSGD(accelerator, model, local_sgd_steps=2)
