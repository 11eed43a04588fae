"""``plait.utils.operations`` (HF Accelerate's ``accelerate.utils.operations``) in one process: the
collectives over the shared state, and the helpers on nested lists, tuples and dicts of tensors.

tests/ddp/test_state_processes.py checks the collectives' numbers on two real processes.
"""

from __future__ import annotations

import sys
from collections import OrderedDict, namedtuple
from pathlib import Path

import pytest
import torch

import plait
import plait.utils
from plait import utils
from plait.state import PartialState
from plait.utils import operations

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
from state_helpers import fresh_state  # noqa: F401  (an autouse fixture)

Pair = namedtuple("Pair", ["left", "right"])


def test_every_name_of_the_utils_table_resolves():
    for name in plait.utils._MODULES["plait.utils.operations"]:
        assert getattr(plait.utils, name) is getattr(operations, name)
    assert utils.set_seed is plait.set_seed  # the same function, device_specific included
    assert plait.synchronize_rng_states is operations.synchronize_rng_states


# --------------------------------------------------------------------------- collectives, one process


def test_collectives_need_no_explicit_state_and_return_this_process_s_values():
    data = {"a": torch.tensor([1.0, 2.0]), "b": [torch.tensor(3.0)]}
    gathered = utils.gather(data)  # starts the shared state, as HF Accelerate's functions do
    assert PartialState().initialized
    assert gathered["a"].tolist() == [1.0, 2.0] and gathered["b"][0].shape == ()
    reduced = utils.reduce(data)  # HF Accelerate's default: the mean
    assert reduced["a"].tolist() == [1.0, 2.0] and reduced["a"] is not data["a"]
    assert utils.reduce(data, reduction="sum", scale=2.0)["a"].tolist() == [2.0, 4.0]
    assert utils.reduce(data, reduction="none", scale=2.0)["a"].tolist() == [1.0, 2.0]
    assert utils.broadcast(data, from_process=0)["a"].tolist() == [1.0, 2.0]
    assert utils.broadcast_object_list(["x", 1]) == ["x", 1]
    assert utils.gather_object([{"rank": 0}]) == [{"rank": 0}]
    padded = utils.pad_across_processes(torch.ones(2, 3), dim=1, pad_index=-1)
    assert padded.tolist() == [[1.0] * 3] * 2
    utils.wait_for_everyone()


def test_a_bad_reduction_is_named():
    with pytest.raises(ValueError, match=r"reduction='avg'.*'mean'"):
        utils.reduce(torch.ones(2), reduction="avg")
    with pytest.raises(TypeError, match="str"):
        utils.gather({"a": "not a tensor"})


# --------------------------------------------------------------------------- structure helpers


def test_send_to_device_keeps_the_structure_and_skips_keys():
    batch = {"x": torch.ones(2), "ids": [torch.zeros(1), Pair(torch.ones(1), "text")], "keep": torch.ones(1)}
    moved = utils.send_to_device(batch, "meta", skip_keys="keep")
    assert moved["x"].device.type == "meta" and moved["ids"][0].device.type == "meta"
    assert isinstance(moved["ids"][1], Pair) and moved["ids"][1].left.device.type == "meta"
    assert moved["ids"][1].right == "text" and moved["keep"].device.type == "cpu"
    everything = utils.send_to_device(batch, torch.device("meta"))
    assert everything["keep"].device.type == "meta"
    nested = utils.send_to_device({"a": {"keep": torch.ones(1), "b": torch.ones(1)}}, "meta", skip_keys=["keep"])
    assert nested["a"]["keep"].device.type == "cpu" and nested["a"]["b"].device.type == "meta"


def test_recursively_apply_and_honor_type():
    data = OrderedDict(a=[torch.tensor(1.0), 2], b=Pair(torch.tensor(3.0), "s"))
    doubled = utils.recursively_apply(lambda t, k: t * k, data, 2)
    assert isinstance(doubled, OrderedDict) and isinstance(doubled["b"], Pair)
    assert doubled["a"][0].item() == 2.0 and doubled["a"][1] == 2 and doubled["b"].left.item() == 6.0
    ints = utils.recursively_apply(lambda v: v + 10, data, test_type=lambda v: isinstance(v, int))
    assert ints["a"][1] == 12 and ints["a"][0].item() == 1.0
    with pytest.raises(TypeError, match="unsupported type str"):
        utils.recursively_apply(lambda t: t, ["s"], error_on_other_type=True)
    assert utils.honor_type(Pair(1, 2), iter([3, 4])) == Pair(3, 4)
    assert utils.honor_type((1,), iter([5])) == (5,)
    assert utils.is_namedtuple(Pair(1, 2)) and not utils.is_namedtuple((1, 2))
    assert utils.is_torch_tensor(torch.ones(1)) and not utils.is_torch_tensor([1])


def test_find_batch_size_and_device():
    assert utils.find_batch_size({"x": [torch.ones(5, 2)], "y": torch.ones(3)}) == 5
    with pytest.raises(ValueError, match="empty list"):
        utils.find_batch_size([])
    with pytest.raises(TypeError, match="str"):
        utils.find_batch_size(["abc"])
    assert utils.find_device([1, {"a": torch.ones(1, device="meta")}]) == torch.device("meta")
    assert utils.find_device({"a": 1}) is None


def test_listify_initialize_slice_concatenate():
    assert utils.listify({"a": torch.tensor([1.5, 2.0], dtype=torch.bfloat16)}) == {"a": [1.5, 2.0]}
    info = operations.TensorInformation(shape=torch.Size([2, 3]), dtype=torch.float16)
    made = utils.initialize_tensors({"x": [info]})
    assert made["x"][0].shape == (2, 3) and made["x"][0].dtype == torch.float16
    assert utils.is_tensor_information(info) and not utils.is_tensor_information(torch.ones(1))
    sliced = utils.slice_tensors({"x": torch.arange(6), "y": [torch.arange(6) * 2]}, slice(1, 3))
    assert sliced["x"].tolist() == [1, 2] and sliced["y"][0].tolist() == [2, 4]
    batches = [{"x": torch.tensor([1, 2]), "y": (torch.tensor([[0]]),)}, {"x": torch.tensor([3]), "y": (torch.tensor([[1]]),)}]
    joined = utils.concatenate(batches)
    assert joined["x"].tolist() == [1, 2, 3] and joined["y"][0].tolist() == [[0], [1]]
    assert utils.concatenate(["only"]) == "only"
    with pytest.raises(TypeError, match="str"):
        utils.concatenate(["a", "b"])


def test_fp32_conversion():
    outputs = {"logits": torch.ones(2, dtype=torch.bfloat16), "ids": torch.ones(2, dtype=torch.int64)}
    converted = utils.convert_to_fp32(outputs)
    assert converted["logits"].dtype == torch.float32 and converted["ids"].dtype == torch.int64

    def forward(x):
        return {"out": x.half()}

    wrapped = utils.convert_outputs_to_fp32(forward)
    assert wrapped(torch.ones(1))["out"].dtype == torch.float32 and wrapped.__wrapped__ is forward


# --------------------------------------------------------------------------- random number generators


def test_synchronize_rng_states_on_one_process_keeps_the_state():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    generator = torch.Generator().manual_seed(9)
    expected_generator = torch.rand(3, generator=torch.Generator().manual_seed(9))
    utils.synchronize_rng_states(["torch", "generator"], generator=generator)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(torch.rand(3, generator=generator), expected_generator)


def test_synchronize_rng_state_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match=r"'npu'.*torch"):
        utils.synchronize_rng_states(["npu"])
    with pytest.raises(ValueError, match="generator="):
        utils.synchronize_rng_state("generator")
    with pytest.raises(plait.NotSupportedError):
        utils.synchronize_rng_state("xla")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            utils.synchronize_rng_state("cuda")
