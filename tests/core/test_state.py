"""``plait.state`` in one process: PartialState without an Accelerator, the state an Accelerator shares,
several accelerators side by side, AcceleratorState and GradientState, split_between_processes.

``Pretend`` places the one process at another rank of a pretend job (its own environment and
barrier-recording collectives), so that what the shared state does on a process other than the
main one is observable here; tests/ddp/test_state_processes.py checks the same on real processes.
"""

from __future__ import annotations

import copy
import datetime
import gc
import sys
from pathlib import Path

import pytest
import torch

import plait
from plait import Accelerator
from plait.process import DistributedType, ProcessEnvironment
from plait.state import AcceleratorState, GradientState, PartialState, is_initialized
from plait.utils.dataclasses import GradientAccumulationPlugin

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
from state_helpers import fresh_state, pretend  # noqa: F401  (fresh_state: an autouse fixture)

# --------------------------------------------------------------------------- PartialState alone


def test_partial_state_without_an_accelerator_is_this_one_process():
    from plait.builtin import plait_device
    from plait.config import resolve_config

    state = PartialState()
    assert state.initialized and not is_initialized()  # no Accelerator was created
    assert (state.process_index, state.local_process_index, state.num_processes) == (0, 0, 1)
    assert state.is_main_process and state.is_local_main_process and state.is_last_process
    assert state.distributed_type is DistributedType.NO and state.distributed_type == "NO"
    assert state.use_distributed is False and state.backend is None and state.debug is False
    assert state.device == plait_device(resolve_config({}), ProcessEnvironment())  # core's choice of device
    assert "Num processes: 1" in repr(state) and "Distributed environment: NO" in repr(state)
    # Every instance shares one state (Borg), attributes set on one included.
    other = PartialState(cpu=True)
    assert other.process is state.process and other.__dict__ is state.__dict__
    state.custom = 3
    assert PartialState().custom == 3


def test_partial_state_cpu_and_kwargs():
    state = PartialState(cpu=True, backend="gloo", timeout=datetime.timedelta(seconds=30), init_method="env://")
    assert state.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"pg_options": 1}, TypeError, ["pg_options", "backend, timeout and init_method"]),
        ({"init_method": "tcp://10.0.0.1:23456"}, ValueError, ["tcp://10.0.0.1:23456", "MASTER_ADDR"]),
        ({"timeout": -5}, ValueError, ["timeout=-5", "timedelta"]),
        ({"timeout": "long"}, ValueError, ["timeout='long'"]),
    ],
)
def test_partial_state_refuses_what_it_cannot_honour(kwargs, error, words):
    with pytest.raises(error) as caught:
        PartialState(**kwargs)
    for word in words:
        assert word in str(caught.value)
    assert not PartialState._shared_state  # nothing half-made is left


def test_a_reset_state_says_what_happened():
    state = PartialState()
    PartialState._reset_state()
    assert not state.initialized
    with pytest.raises(AttributeError, match=r"_reset_state\(\).*PartialState\(\) nor Accelerator\(\)"):
        _ = state.process_index
    assert PartialState().process_index == 0 and state.initialized  # made again, seen by the old instance too


# --------------------------------------------------------------------------- with accelerators


def test_the_first_accelerator_gives_partial_state_its_process_part():
    accelerator = Accelerator(cpu=True)
    state = PartialState()
    assert state.process is accelerator.process and state.collectives is accelerator.collectives
    assert (state.process_index, state.num_processes, state.device) == (0, 1, accelerator.device)
    assert state.distributed_type == accelerator.distributed_type == DistributedType.NO
    assert is_initialized()
    assert AcceleratorState() is accelerator.state and accelerator.state.initialized
    assert accelerator.state.mixed_precision == "no" and accelerator.state.process is accelerator.process
    assert accelerator.state.deepspeed_plugin is None and accelerator.state.fsdp_plugin is None
    assert accelerator.state.dynamo_plugin is accelerator.dynamo_plugin
    assert "Mixed precision type: no" in repr(accelerator.state)
    assert accelerator.state.fork_launched is False and accelerator.state.backend is None
    copied = copy.deepcopy(accelerator.state)  # a copy is bound to a copy; the original is untouched
    assert copied.accelerator is not accelerator and accelerator.state.accelerator is accelerator
    assert AcceleratorState() is accelerator.state


def test_a_pretend_rank_is_what_partial_state_reports():
    accelerator, plugin = pretend(rank=1, world_size=3)
    state = PartialState()
    assert (state.process_index, state.local_process_index, state.num_processes) == (1, 1, 3)
    assert not state.is_main_process and not state.is_last_process and state.use_distributed
    assert state.distributed_type == accelerator.distributed_type == DistributedType.MULTI_CPU
    state.wait_for_everyone()
    AcceleratorState().wait_for_everyone()
    assert plugin.events == ["barrier", "barrier"]  # both went through the accelerator's collectives


def test_partial_state_first_keeps_its_process_and_takes_the_accelerator_s_distributed_type():
    state = PartialState()
    process = state.process
    accelerator = Accelerator(cpu=True)
    assert PartialState().process is process is not accelerator.process
    assert PartialState().process_index == accelerator.process_index
    assert PartialState().distributed_type == accelerator.distributed_type
    assert AcceleratorState() is accelerator.state


def test_several_accelerators_keep_their_own_state(regression):
    first = Accelerator(cpu=True, gradient_accumulation_steps=2)
    second = Accelerator(cpu=True, mixed_precision="bf16")
    assert (first.state.mixed_precision, second.state.mixed_precision) == ("no", "bf16")
    assert first.state is not second.state and first.gradient_state is not second.gradient_state
    assert AcceleratorState() is second.state and GradientState() is second.gradient_state
    assert PartialState().process is first.process  # the first one's, as HF Accelerate's single state
    with pytest.raises(ValueError, match=r"mixed_precision='fp16'.*already created.*'bf16'"):
        AcceleratorState(mixed_precision="fp16")
    assert AcceleratorState(mixed_precision="BF16") is second.state  # agreeing arguments are fine

    # The first accelerator still accumulates over 2 micro-steps, the second over 1.
    model, optimizer, loader = first.prepare(*regression.make())
    flags = []
    for x, y in loader:
        with first.accumulate(model):
            first.backward(torch.nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
        flags.append(first.sync_gradients)
    assert flags == [False, True] * 4
    assert (first.gradient_state.num_steps, second.gradient_state.num_steps) == (2, 1)

    del second
    gc.collect()
    assert AcceleratorState() is first.state and GradientState() is first.gradient_state


def test_accelerator_state_without_an_accelerator_reads_the_config(monkeypatch):
    monkeypatch.setenv("PLAIT_MIXED_PRECISION", "bf16")
    state = AcceleratorState()
    assert state.mixed_precision == "bf16" and not state.initialized and not is_initialized()
    assert state.process is PartialState().process and state.distributed_type == DistributedType.NO
    assert (state.num_processes, state.process_index, state.is_main_process) == (1, 0, True)
    assert AcceleratorState(mixed_precision="fp16").mixed_precision == "fp16"  # an argument wins
    given = object()
    assert AcceleratorState(fsdp_plugin=given).fsdp_plugin is given
    with pytest.raises(ValueError, match="fp8"):
        AcceleratorState(mixed_precision="fp8")


def test_accelerator_state_reset_forgets_the_accelerators():
    accelerator = Accelerator(cpu=True)
    AcceleratorState._reset_state()
    assert AcceleratorState() is not accelerator.state and not AcceleratorState().initialized
    assert PartialState().process is accelerator.process  # only reset_partial_state=True forgets that
    AcceleratorState._reset_state(reset_partial_state=True)
    assert not PartialState._shared_state


# --------------------------------------------------------------------------- GradientState


def test_gradient_state_without_an_accelerator_is_one_shared_object():
    state = GradientState()
    assert GradientState() is state and isinstance(state, GradientState)
    assert (state.num_steps, state.sync_gradients, state.end_of_dataloader, state.remainder) == (1, True, False, -1)
    assert state.in_dataloader is False and state.active_dataloader is None and state.dataloader_references == [None]
    assert state.initialized and state.plugin_kwargs == {} and state.sync_with_dataloader
    plugin = GradientAccumulationPlugin(num_steps=3, sync_with_dataloader=False)
    assert GradientState(plugin) is state
    assert state.num_steps == 3 and state.plugin_kwargs == {"num_steps": 3, "sync_with_dataloader": False}
    assert state.sync_with_dataloader is False
    GradientState._reset_state()
    assert GradientState() is not state


def test_gradient_state_is_the_accelerator_s(regression):
    accelerator = Accelerator(cpu=True)
    state = GradientState()
    assert state is accelerator.gradient_state
    assert isinstance(accelerator.gradient_state, GradientState)
    assert isinstance(plait.training.GradientState(2), GradientState)  # every plait gradient state is one
    GradientState(GradientAccumulationPlugin(num_steps=4))
    assert accelerator.gradient_accumulation_steps == 4  # HF Accelerate's plugin update reaches the accelerator

    _, _, loader = accelerator.prepare(*regression.make())
    seen = []
    for _ in loader:
        seen.append((state.in_dataloader, state.active_dataloader is loader, state.end_of_dataloader))
    assert seen == [(True, True, False)] * 7 + [(True, True, True)]
    assert state.active_dataloader is None and not state.in_dataloader
    state._set_sync_gradients(False)
    assert accelerator.sync_gradients is False


@pytest.mark.parametrize(
    ("plugin", "error", "words"),
    [
        ({"num_steps": 2}, TypeError, ["{'num_steps': 2}", "GradientAccumulationPlugin"]),
        (GradientAccumulationPlugin(num_steps=0), ValueError, ["num_steps=0", "at least 1"]),
    ],
)
def test_gradient_state_refuses_a_bad_plugin(plugin, error, words):
    with pytest.raises(error) as caught:
        GradientState(plugin)
    for word in words:
        assert word in str(caught.value)


# --------------------------------------------------------------------------- split_between_processes


#: (inputs, world_size, each rank's share, each rank's padded share): HF Accelerate's documented results.
SPLITS = [
    (["A", "B", "C"], 2, [["A", "B"], ["C"]], [["A", "B"], ["C", "C"]]),
    (list(range(7)), 3, [[0, 1, 2], [3, 4], [5, 6]], [[0, 1, 2], [3, 4, 6], [5, 6, 6]]),
    (list(range(6)), 3, [[0, 1], [2, 3], [4, 5]], [[0, 1], [2, 3], [4, 5]]),
    (["only"], 2, [["only"], []], [["only"], ["only"]]),
]


@pytest.mark.parametrize(("inputs", "world_size", "shares", "padded"), SPLITS)
def test_split_between_processes_as_hf_accelerate(inputs, world_size, shares, padded):
    for rank in range(world_size):
        pretend(rank, world_size)
        state = PartialState()
        with state.split_between_processes(inputs) as share:
            assert share == shares[rank]
        with state.split_between_processes(inputs, apply_padding=True) as share:
            assert share == padded[rank]
        if all(isinstance(item, int) for item in inputs):
            with AcceleratorState().split_between_processes(torch.tensor(inputs)) as share:
                assert share.tolist() == shares[rank]
        with state.split_between_processes({"x": inputs, "y": inputs}) as share:
            assert share == {"x": shares[rank], "y": shares[rank]}


def test_split_between_processes_of_tensors_pads_with_the_last_element():
    for rank, expected in enumerate([[0, 1, 2], [3, 4, 6], [5, 6, 6]]):
        pretend(rank, 3)
        with PartialState().split_between_processes(torch.arange(7), apply_padding=True) as share:
            assert share.tolist() == expected


def test_split_between_processes_with_one_process_is_everything():
    inputs = [1, 2, 3]
    with PartialState().split_between_processes(inputs, apply_padding=True) as share:
        assert share is inputs


def test_split_between_processes_refuses_values_of_different_lengths():
    pretend(0, 2)
    with pytest.raises(ValueError, match="one length"), PartialState().split_between_processes({"a": [1, 2], "b": [1]}):
        pass


# --------------------------------------------------------------------------- on_* and printing


def test_decorators_and_print_on_a_rank_other_than_the_main_one(capsys):
    pretend(rank=1, world_size=3)
    state = PartialState()
    ran = []
    results = [
        state.on_main_process(lambda: ran.append("main") or "main")(),
        state.on_process(process_index=1)(lambda: ran.append("one") or "one")(),
        state.on_last_process(lambda: ran.append("last") or "last")(),
        state.on_local_process(local_process_index=1)(lambda: ran.append("local1") or "local1")(),
        state.on_local_main_process(lambda: ran.append("local main") or "local main")(),
    ]
    assert results == [None, "one", None, "local1", None] and ran == ["one", "local1"]
    state.print("hidden")
    with state.main_process_first():
        ran.append("block")
    assert ran[-1] == "block" and capsys.readouterr().out == ""
