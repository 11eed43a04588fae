"""Collectives of the Accelerator in one process, and the pure splitting function behind
``split_between_processes`` against HF Accelerate's documented semantics.

One process: every collective returns its input's values; what is checked is that
nested structures and their container types come back intact and that what cannot be
communicated is refused.
"""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import pytest
import torch
from torch.utils.data import DataLoader

from plait import Accelerator
from plait.collectives import split_for_process


@pytest.fixture
def accelerator():
    return Accelerator()


Pair = namedtuple("Pair", ["left", "right"])


def nested():
    return {
        "logits": torch.tensor([[0.5, 1.5], [2.5, 3.5]]),
        "labels": [torch.tensor([1, 0]), (torch.tensor([7]), torch.tensor([[True], [False]]))],
        "pair": Pair(torch.tensor([1.0]), torch.tensor([2, 3], dtype=torch.int16)),
        "ordered": OrderedDict(b=torch.tensor([9.0]), a=torch.tensor([8.0])),
    }


def assert_same_structure(result, expected):
    assert type(result) is type(expected), (type(result), type(expected))
    if isinstance(expected, torch.Tensor):
        assert result.dtype == expected.dtype
        assert result.shape == expected.shape
        assert torch.equal(result, expected)
    elif isinstance(expected, dict):
        assert list(result) == list(expected)
        for key in expected:
            assert_same_structure(result[key], expected[key])
    elif isinstance(expected, (list, tuple)):
        assert len(result) == len(expected)
        for r, e in zip(result, expected):
            assert_same_structure(r, e)
    else:
        assert result == expected


# --------------------------------------------------------------------------- gather


def test_gather_returns_every_tensor_of_a_nested_structure(accelerator):
    gathered = accelerator.gather(nested())
    assert_same_structure(gathered, nested())


def test_gather_a_single_tensor(accelerator):
    tensor = torch.arange(6).view(3, 2)
    assert torch.equal(accelerator.gather(tensor), torch.arange(6).view(3, 2))


@pytest.mark.parametrize(
    "bad",
    [[torch.ones(1), "text"], {"a": torch.ones(1), "b": 3}, "text", (torch.ones(1), None), torch.nn.Linear(1, 1)],
)
def test_gather_refuses_what_is_not_a_tensor(accelerator, bad):
    with pytest.raises(TypeError):
        accelerator.gather(bad)


def test_gather_for_metrics_over_a_prepared_loader_gives_every_sample_once(accelerator):
    loader = accelerator.prepare(DataLoader(list(range(10)), batch_size=4))
    predictions = [accelerator.gather_for_metrics(batch * 10) for batch in loader]
    assert torch.cat(predictions).tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_gather_for_metrics_keeps_structures_and_objects(accelerator):
    assert_same_structure(accelerator.gather_for_metrics(nested()), nested())
    assert accelerator.gather_for_metrics(["cat", "dog"]) == ["cat", "dog"]
    tensors = [torch.ones(2), torch.zeros(3)]
    result = accelerator.gather_for_metrics(tensors, use_gather_object=True)
    assert_same_structure(result, [torch.ones(2), torch.zeros(3)])


def test_gather_object_returns_the_object(accelerator):
    assert accelerator.gather_object(["a", 1, {"k": 2}]) == ["a", 1, {"k": 2}]
    assert_same_structure(accelerator.gather_object(nested()), nested())
    assert accelerator.gather_object(("x", "y")) == ("x", "y")
    assert accelerator.gather_object(5) == 5


# --------------------------------------------------------------------------- reduce


@pytest.mark.parametrize("reduction", ["sum", "mean", "max", "none"])
def test_reduce_in_one_process_keeps_values_and_structure(accelerator, reduction):
    data = {"loss": torch.tensor([1.5, -2.0]), "counts": [torch.tensor([3, 4]), (torch.tensor(5.0),)]}
    reduced = accelerator.reduce(data, reduction=reduction)
    expected = {"loss": torch.tensor([1.5, -2.0]), "counts": [torch.tensor([3, 4]), (torch.tensor(5.0),)]}
    assert_same_structure(reduced, expected)


def test_reduce_returns_a_copy(accelerator):
    tensor = torch.tensor([1.0, 2.0])
    reduced = accelerator.reduce(tensor, reduction="sum")
    reduced += 1
    assert tensor.tolist() == [1.0, 2.0]


def test_reduce_default_is_sum(accelerator):
    assert accelerator.reduce(torch.tensor([2.0, 4.0])).tolist() == [2.0, 4.0]


@pytest.mark.parametrize("reduction", ["avg", "SUM", "min", ""])
def test_reduce_rejects_an_unknown_reduction(accelerator, reduction):
    with pytest.raises(ValueError, match="reduction"):
        accelerator.reduce(torch.ones(2), reduction=reduction)


def test_reduce_refuses_non_tensors(accelerator):
    with pytest.raises(TypeError):
        accelerator.reduce([torch.ones(1), 2.0])


# --------------------------------------------------------------------------- pad, broadcast


@pytest.mark.parametrize("dim", [0, 1, -1, 5])
def test_pad_across_processes_in_one_process_changes_nothing(accelerator, dim):
    data = [torch.arange(6).view(2, 3), {"mask": torch.ones(2, 4, dtype=torch.bool)}]
    padded = accelerator.pad_across_processes(data, dim=dim, pad_index=-1, pad_first=True)
    assert_same_structure(padded, [torch.arange(6).view(2, 3), {"mask": torch.ones(2, 4, dtype=torch.bool)}])


def test_pad_across_processes_refuses_non_tensors(accelerator):
    with pytest.raises(TypeError):
        accelerator.pad_across_processes({"ids": [1, 2, 3]})


def test_broadcast_keeps_values_and_structure(accelerator):
    assert_same_structure(accelerator.broadcast(nested()), nested())
    assert accelerator.broadcast(torch.tensor([3, 1]), from_process=0).tolist() == [3, 1]
    with pytest.raises(TypeError):
        accelerator.broadcast({"step": 3})


def test_broadcast_object_list_fills_the_list_in_place(accelerator):
    objects = ["run-name", {"lr": 0.1}, 7]
    result = accelerator.broadcast_object_list(objects)
    assert result is objects
    assert result == ["run-name", {"lr": 0.1}, 7]
    assert accelerator.broadcast_object_list([None], from_process=0) == [None]


# --------------------------------------------------------------------------- split_for_process
#
# Expected values follow HF Accelerate's PartialState.split_between_processes: contiguous
# chunks, the first `len % n` processes get one more item, and with apply_padding every
# share is as long as the longest, filled with the input's last element.


def shares(inputs, count, padding=False):
    return [split_for_process(inputs, index, count, padding) for index in range(count)]


def test_split_list_between_two_processes():
    assert shares(list(range(7)), 2) == [[0, 1, 2, 3], [4, 5, 6]]
    assert shares(list(range(7)), 2, padding=True) == [[0, 1, 2, 3], [4, 5, 6, 6]]
    assert shares(list(range(6)), 2, padding=True) == [[0, 1, 2], [3, 4, 5]]
    assert shares(["A", "B", "C"], 2) == [["A", "B"], ["C"]]
    assert shares(["A", "B", "C"], 2, padding=True) == [["A", "B"], ["C", "C"]]


def test_split_list_between_three_processes():
    assert shares(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert shares(list(range(8)), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert shares(list(range(7)), 3, padding=True) == [[0, 1, 2], [3, 4, 6], [5, 6, 6]]
    assert shares(list(range(4)), 3, padding=True) == [[0, 1], [2, 3], [3, 3]]


def test_split_fewer_items_than_processes():
    assert shares([10, 20], 3) == [[10], [20], []]
    assert shares([10, 20], 3, padding=True) == [[10], [20], [20]]


def test_split_tuple_stays_a_tuple():
    assert shares(("a", "b", "c", "d"), 3) == [("a", "b"), ("c",), ("d",)]
    assert shares(("a", "b", "c", "d"), 3, padding=True) == [("a", "b"), ("c", "d"), ("d", "d")]


def test_split_tensor_between_two_and_three_processes():
    def as_lists(parts):
        return [p.tolist() for p in parts]

    assert as_lists(shares(torch.arange(5), 2)) == [[0, 1, 2], [3, 4]]
    assert as_lists(shares(torch.arange(5), 2, padding=True)) == [[0, 1, 2], [3, 4, 4]]
    assert as_lists(shares(torch.arange(7), 3, padding=True)) == [[0, 1, 2], [3, 4, 6], [5, 6, 6]]
    rows = torch.arange(8).view(4, 2)
    assert as_lists(shares(rows, 3)) == [[[0, 1], [2, 3]], [[4, 5]], [[6, 7]]]
    assert as_lists(shares(rows, 3, padding=True)) == [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[6, 7], [6, 7]]]
    assert all(p.dtype == torch.int64 for p in shares(rows, 3, padding=True))


def test_split_dict_splits_every_value_alike():
    inputs = {"prompt": ["p0", "p1", "p2", "p3", "p4"], "id": torch.arange(5)}
    parts = shares(inputs, 2)
    assert [p["prompt"] for p in parts] == [["p0", "p1", "p2"], ["p3", "p4"]]
    assert [p["id"].tolist() for p in parts] == [[0, 1, 2], [3, 4]]

    padded = shares(inputs, 3, padding=True)
    assert [p["prompt"] for p in padded] == [["p0", "p1"], ["p2", "p3"], ["p4", "p4"]]
    assert [p["id"].tolist() for p in padded] == [[0, 1], [2, 3], [4, 4]]
    assert inputs["prompt"] == ["p0", "p1", "p2", "p3", "p4"]  # the input is left alone


def test_split_dict_needs_values_of_one_length():
    with pytest.raises(ValueError, match="length"):
        split_for_process({"a": [1, 2, 3], "b": [1, 2]}, 0, 2)


def test_split_for_one_process_is_the_input():
    inputs = [1, 2, 3]
    assert split_for_process(inputs, 0, 1) is inputs
    assert split_for_process(inputs, 0, 1, apply_padding=True) is inputs
