"""The Accelerator's public API in one process: properties, prepare, optimizer and scheduler wrapping,
free_memory, end_training, register_for_checkpointing, set_seed, ProjectConfiguration.

Written the way a user's HF Accelerate script uses each name. The other test_api_*.py files cover
dataloaders, process helpers, collectives, and model/precision/saving helpers.
"""

from __future__ import annotations

import gc
import random
import weakref

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import plait
from plait import Accelerator, ProjectConfiguration
from plait.process import ProcessEnvironment


class ShutdownRecorder:
    """A plugin recording shutdowns, around the built-in implementation (which still runs)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    @plait.hookimpl(wrapper=True)
    def plait_shutdown(self, accelerator):
        self.events.append("shutdown")
        return (yield)


class PretendProcess:
    """A plugin placing this (only) process at ``rank`` of ``world_size`` (see test_api_processes.py)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.environment = ProcessEnvironment(
            rank=rank, world_size=world_size, local_rank=rank, local_world_size=world_size
        )

    @plait.hookimpl
    def plait_process_environment(self, config):
        return self.environment


def make_training_objects(lr: float = 0.1):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    dataloader = DataLoader(torch.arange(30, dtype=torch.float32).view(10, 3), batch_size=4)
    return model, optimizer, scheduler, dataloader


# --------------------------------------------------------------------------- properties


def test_single_process_properties():
    accelerator = Accelerator()

    assert accelerator.device == torch.device("cpu")  # no accelerator on this machine
    assert accelerator.is_main_process is True
    assert accelerator.is_local_main_process is True
    assert accelerator.is_last_process is True
    assert accelerator.process_index == 0
    assert accelerator.local_process_index == 0
    assert accelerator.num_processes == 1
    assert accelerator.use_distributed is False
    assert accelerator.backend == "single"
    assert accelerator.distributed_type == plait.DistributedType.NO
    assert accelerator.distributed_type == "NO"
    assert accelerator.distributed_type != plait.DistributedType.MULTI_GPU
    assert accelerator.mixed_precision == "no"
    assert accelerator.sync_gradients is True
    assert accelerator.gradient_accumulation_steps == 1
    assert accelerator.project_dir is None
    assert accelerator.logging_dir is None


def test_properties_follow_the_arguments(tmp_path):
    accelerator = Accelerator(
        cpu=True, mixed_precision="bf16", gradient_accumulation_steps=4, project_dir=str(tmp_path)
    )

    assert accelerator.device == torch.device("cpu")
    assert accelerator.mixed_precision == "bf16"
    assert accelerator.gradient_accumulation_steps == 4
    assert accelerator.project_dir == str(tmp_path)
    assert accelerator.logging_dir == str(tmp_path)


def test_properties_of_another_rank():
    accelerator = Accelerator(plugins=[PretendProcess(rank=1, world_size=3)])

    assert (accelerator.process_index, accelerator.local_process_index, accelerator.num_processes) == (1, 1, 3)
    assert accelerator.is_main_process is False
    assert accelerator.is_local_main_process is False
    assert accelerator.is_last_process is False
    assert accelerator.use_distributed is True


# --------------------------------------------------------------------------- prepare


@pytest.mark.parametrize(
    "order",
    [
        ("model", "optimizer", "dataloader", "scheduler"),
        ("dataloader", "scheduler", "model", "optimizer"),
        ("scheduler", "optimizer", "dataloader", "model"),
        ("optimizer", "model"),
        ("dataloader", "model"),
    ],
)
def test_prepare_returns_objects_in_the_order_given(order):
    accelerator = Accelerator()
    model, optimizer, scheduler, dataloader = make_training_objects()
    objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "dataloader": dataloader}

    prepared = accelerator.prepare(*(objects[name] for name in order))

    assert isinstance(prepared, tuple) and len(prepared) == len(order)
    expected_types = {
        "model": torch.nn.Linear,
        "optimizer": torch.optim.Optimizer,
        "scheduler": object,
        "dataloader": DataLoader,
    }
    for name, obj in zip(order, prepared):
        assert isinstance(obj, expected_types[name]), (name, type(obj))
    by_name = dict(zip(order, prepared))
    assert by_name["model"] is model  # one process: the module itself
    if "optimizer" in by_name:
        assert by_name["optimizer"].param_groups is optimizer.param_groups
    if "scheduler" in by_name:
        assert by_name["scheduler"].get_last_lr() == [0.1]
        assert by_name["scheduler"].scheduler is scheduler
    if "dataloader" in by_name:
        assert [b[:, 0].tolist() for b in by_name["dataloader"]] == [[0, 3, 6, 9], [12, 15, 18, 21], [24, 27]]


def test_prepare_several_models_and_optimizers():
    accelerator = Accelerator()
    first, second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
    opt1, opt2 = torch.optim.SGD(first.parameters(), lr=1.0), torch.optim.Adam(second.parameters(), lr=1e-3)

    m1, o1, m2, o2 = accelerator.prepare(first, opt1, second, opt2)

    assert m1 is first and m2 is second
    assert o1.param_groups is opt1.param_groups and o2.param_groups is opt2.param_groups
    assert o1.defaults["lr"] == 1.0 and o2.defaults["lr"] == 1e-3


def test_prepare_one_object_returns_the_object_not_a_tuple():
    accelerator = Accelerator()
    model, optimizer, scheduler, dataloader = make_training_objects()

    assert accelerator.prepare(model) is model
    prepared_optimizer = accelerator.prepare(optimizer)
    assert isinstance(prepared_optimizer, torch.optim.Optimizer)
    assert not isinstance(prepared_optimizer, tuple)
    prepared_loader = accelerator.prepare(dataloader)
    assert isinstance(prepared_loader, DataLoader)
    assert len(prepared_loader) == 3
    prepared_scheduler = accelerator.prepare(scheduler)
    assert prepared_scheduler.get_last_lr() == [0.1]


def test_preparing_a_prepared_object_again_returns_it():
    accelerator = Accelerator()
    model, optimizer, scheduler, dataloader = make_training_objects()
    prepared = accelerator.prepare(model, optimizer, scheduler, dataloader)

    again = accelerator.prepare(*prepared)

    assert all(a is b for a, b in zip(again, prepared))


@pytest.mark.parametrize("other", [None, {"lr": 0.1}, "model.pt", 3, torch.nn.functional.mse_loss])
def test_prepare_returns_what_it_does_not_prepare_unchanged(other):
    # HF Accelerate's semantics: prepare(None), a tokenizer, a loss function... come back as they are, in place.
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 2)

    prepared_model, same, prepared_again = accelerator.prepare(model, other, model)

    assert same is other
    assert prepared_model is prepared_again
    assert list(accelerator.prepared.models) == [prepared_model]
    assert accelerator.prepare(None) is None


@pytest.mark.parametrize("bad, type_name", [({"lr": 0.1}, "dict"), ("model.pt", "str"), (3, "int")])
def test_prepare_model_rejects_other_objects_naming_types(bad, type_name):
    accelerator = Accelerator()

    with pytest.raises(TypeError) as error:
        accelerator.prepare_model(bad)

    message = str(error.value)
    assert type_name in message
    for accepted in ("Module", "Optimizer", "LRScheduler", "DataLoader"):
        assert accepted in message


def test_prepare_methods_one_kind_each():
    accelerator = Accelerator()
    model, optimizer, _, dataloader = make_training_objects()

    assert accelerator.prepare_model(model) is model
    prepared_optimizer = accelerator.prepare_optimizer(optimizer)
    assert isinstance(prepared_optimizer, torch.optim.Optimizer)
    assert prepared_optimizer.param_groups is optimizer.param_groups
    scheduler = accelerator.prepare_scheduler(torch.optim.lr_scheduler.LambdaLR(prepared_optimizer, lambda e: 0.1**e))
    prepared_loader = accelerator.prepare_data_loader(dataloader)
    assert len(prepared_loader) == 3

    prepared_optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_prepare_methods_reject_the_wrong_kind():
    accelerator = Accelerator()
    model, optimizer, scheduler, dataloader = make_training_objects()

    with pytest.raises(TypeError, match="optimizer"):
        accelerator.prepare_model(optimizer)
    with pytest.raises(TypeError, match="model"):
        accelerator.prepare_optimizer(model)
    with pytest.raises(TypeError, match="dataloader"):
        accelerator.prepare_scheduler(dataloader)
    with pytest.raises(TypeError, match="scheduler"):
        accelerator.prepare_data_loader(scheduler)


def test_prepare_model_places_it_on_the_device():
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 2).double()  # placement moves, it does not cast
    prepared = accelerator.prepare_model(model)
    assert all(p.device == accelerator.device and p.dtype == torch.float64 for p in prepared.parameters())


# --------------------------------------------------------------------------- optimizer and scheduler


def test_prepared_optimizer_is_the_users_optimizer_underneath():
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model, prepared = accelerator.prepare(model, optimizer)

    assert isinstance(prepared, torch.optim.Optimizer)
    assert prepared.param_groups is optimizer.param_groups
    assert prepared.defaults == optimizer.defaults

    model(torch.tensor([[1.0, 3.0]])).sum().backward()  # d/dw = [1, 3]
    prepared.step()
    assert model.weight.tolist() == [[0.5, 0.5]]
    prepared.zero_grad()
    assert model.weight.grad is None
    assert prepared.state_dict()["param_groups"][0]["lr"] == 0.5


def test_scheduler_built_after_prepare_drives_the_original_optimizer():
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model, prepared_optimizer = accelerator.prepare(model, optimizer)
    scheduler = accelerator.prepare(torch.optim.lr_scheduler.LambdaLR(prepared_optimizer, lambda epoch: 0.5**epoch))

    lrs = []
    for _ in range(3):
        accelerator.backward(model(torch.ones(1, 2)).sum())
        prepared_optimizer.step()
        scheduler.step()
        prepared_optimizer.zero_grad()
        lrs.append(optimizer.param_groups[0]["lr"])

    assert lrs == [0.5, 0.25, 0.125]
    assert scheduler.get_last_lr() == [0.125]


def test_prepare_accepts_reduce_lr_on_plateau():
    accelerator = Accelerator()
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=0)
    model, optimizer, plateau = accelerator.prepare(model, optimizer, plateau)

    for metric in (1.0, 2.0, 3.0):
        plateau.step(metric)

    assert optimizer.param_groups[0]["lr"] == 0.25


# --------------------------------------------------------------------------- lifecycle


def test_free_memory_releases_the_prepared_objects():
    accelerator = Accelerator(mixed_precision="fp16")
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.backward(model(torch.ones(1, 2)).sum() * float("inf"))
    optimizer.step()
    assert accelerator.optimizer_step_was_skipped is True
    model_ref = weakref.ref(model)

    freed = accelerator.free_memory(model, optimizer)
    model = optimizer = None  # what the user writes: model, optimizer = accelerator.free_memory(model, optimizer)
    gc.collect()

    assert freed == [None, None]
    assert model_ref() is None  # the accelerator kept no reference
    assert accelerator.optimizer_step_was_skipped is False
    assert accelerator.step == 0
    assert accelerator.clear() == []


def test_end_training_shuts_down_once():
    events: list[str] = []
    accelerator = Accelerator(plugins=[ShutdownRecorder(events)])

    accelerator.end_training()
    accelerator.end_training()

    assert events == ["shutdown"]


def test_register_for_checkpointing_rejects_objects_without_state_dict(tmp_path):
    accelerator = Accelerator()

    class OnlySaves:
        def state_dict(self):
            return {}

    with pytest.raises(ValueError, match=r"item 0 \(.*OnlySaves\)"):
        accelerator.register_for_checkpointing(OnlySaves())
    # HF Accelerate's error: a ValueError naming the item's index; nothing is registered.
    with pytest.raises(ValueError, match=r"item 1 \(int\)"):
        accelerator.register_for_checkpointing(torch.nn.Linear(1, 1), 3)
    assert accelerator.checkpointer.custom_objects == []


def test_register_for_checkpointing_saves_and_restores_the_object(tmp_path):
    class Counter:
        def __init__(self) -> None:
            self.count = 0

        def state_dict(self):
            return {"count": self.count}

        def load_state_dict(self, state):
            self.count = state["count"]

    accelerator = Accelerator()
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    counter.count = 41
    accelerator.save_state(tmp_path / "ckpt")
    counter.count = 0

    accelerator.load_state(tmp_path / "ckpt")

    assert counter.count == 41


# --------------------------------------------------------------------------- module-level helpers


def draws():
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


def test_set_seed_makes_torch_numpy_and_python_draws_repeat():
    plait.set_seed(42)
    first = draws()
    plait.set_seed(42)
    second = draws()
    plait.set_seed(43)
    third = draws()

    assert first == second
    for a, b in zip(first, third):
        assert a != b


def test_set_seed_matches_the_libraries_own_seeding():
    plait.set_seed(5)
    observed = draws()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    assert observed == draws()


def test_project_configuration_defaults(tmp_path):
    config = ProjectConfiguration(project_dir=str(tmp_path))
    assert config.logging_dir == str(tmp_path)
    assert config.automatic_checkpoint_naming is False
    assert config.total_limit is None
    assert config.iteration == 0

    separate = ProjectConfiguration(project_dir=str(tmp_path), logging_dir=str(tmp_path / "logs"))
    assert separate.logging_dir == str(tmp_path / "logs")

    empty = ProjectConfiguration()
    assert (empty.project_dir, empty.logging_dir) == (None, None)
    empty.set_directories(str(tmp_path / "later"))
    assert (empty.project_dir, empty.logging_dir) == (str(tmp_path / "later"), str(tmp_path / "later"))


def test_accelerator_takes_project_dirs_from_either_place(tmp_path):
    from_argument = Accelerator(project_dir=str(tmp_path / "run"))
    assert from_argument.project_dir == str(tmp_path / "run")
    assert from_argument.logging_dir == str(tmp_path / "run")

    config = ProjectConfiguration(project_dir=str(tmp_path / "proj"), logging_dir=str(tmp_path / "logs"))
    from_config = Accelerator(project_config=config)
    assert from_config.project_dir == str(tmp_path / "proj")
    assert from_config.logging_dir == str(tmp_path / "logs")
