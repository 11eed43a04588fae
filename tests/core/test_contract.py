"""The hook contract's explicit capabilities: the collectives object, gradient-sync control during
accumulation, backend-neutral model initialisation (``init_module``), new-style wrappers, and the one
typed caller every hook call goes through."""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import pytest
import torch

import plait
from plait import Accelerator
from plait.collectives import Collectives
from plait.errors import PluginError
from plait.plugins import SPEC_NAMES
from plait.plugins.hooks import Hooks
from plait.training import GradientSyncControl

#: Fanned out one implementation at a time by plait.tracking.call_each, not through Hooks.
FANNED_OUT = {"plait_tracker_start", "plait_tracker_log", "plait_tracker_finish"}


def test_every_hook_has_one_typed_method_on_the_caller():
    methods = {f"plait_{name}" for name, _ in inspect.getmembers(Hooks, inspect.isfunction) if not name.startswith("_")}

    assert methods == SPEC_NAMES - FANNED_OUT


class Ones(torch.nn.Module):
    """A layer whose initialisation is recognisable: every weight 5."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(4, 3))
        torch.nn.init.constant_(self.weight, 5.0)


def test_init_module_builds_on_the_device_and_initialises_by_default():
    accelerator = Accelerator(cpu=True)

    with accelerator.init_module():
        model = Ones()
        linear = torch.nn.Linear(3, 2)

    assert model.weight.device == accelerator.device
    assert torch.equal(model.weight, torch.full((4, 3), 5.0))
    assert linear.weight.abs().sum() > 0


def test_init_module_with_empty_init_skips_initialisation():
    accelerator = Accelerator(cpu=True)

    with accelerator.init_module(empty_init=True):
        model = Ones()
    # outside the context, initialisation runs again
    again = Ones()

    assert not torch.equal(model.weight, torch.full((4, 3), 5.0))
    assert torch.equal(again.weight, torch.full((4, 3), 5.0))


def test_a_backend_owns_init_module():
    built: list[str] = []

    class MetaInit:
        @plait.hookimpl
        def plait_init_module(self, accelerator: Any, empty_init: bool | None) -> Any:
            built.append(f"empty_init={empty_init}")
            return torch.device("meta")

    accelerator = Accelerator(cpu=True, plugins=[MetaInit()])
    with accelerator.init_module(empty_init=False):
        model = torch.nn.Linear(3, 2)

    assert built == ["empty_init=False"]
    assert model.weight.is_meta


class CountingSync(GradientSyncControl):
    """Skips the synchronisation of models marked ``synchronised``, counting every question and context."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.entered = 0

    def skips_sync(self, model: torch.nn.Module) -> bool:
        self.asked.append(type(model).__name__)
        return bool(getattr(model, "synchronised", False))

    def no_sync(self, model: torch.nn.Module) -> Any:
        control = self

        @contextlib.contextmanager
        def skipping() -> Any:
            control.entered += 1
            yield

        return skipping()


def _train(accelerator: Accelerator, model: torch.nn.Module, steps: int) -> list[bool]:
    optimizer = accelerator.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    syncs = []
    for _ in range(steps):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.ones(2, 3)).sum())
            optimizer.step()
            optimizer.zero_grad()
        syncs.append(accelerator.sync_gradients)
    return syncs


def test_accumulation_skips_sync_through_the_backend_s_control_on_the_micro_steps_that_do_not_step():
    control = CountingSync()

    class Backend:
        @plait.hookimpl
        def plait_sync_control(self, accelerator: Any) -> GradientSyncControl:
            return control

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3, plugins=[Backend()])
    model = accelerator.prepare_model(torch.nn.Linear(3, 1))
    model.synchronised = True

    syncs = _train(accelerator, model, 6)

    assert syncs == [False, False, True, False, False, True]
    assert control.entered == 4  # once per micro-step that does not synchronise
    assert control.asked == ["Linear"]  # asked once per model, then remembered
    with accelerator.no_sync(model):
        pass
    assert control.entered == 5


def test_a_model_whose_sync_need_not_be_skipped_costs_no_context_per_step():
    control = CountingSync()

    class Backend:
        @plait.hookimpl
        def plait_sync_control(self, accelerator: Any) -> GradientSyncControl:
            return control

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2, plugins=[Backend()])
    model = accelerator.prepare_model(torch.nn.Linear(3, 1))

    assert _train(accelerator, model, 4) == [False, True, False, True]
    assert control.entered == 0
    assert control.asked == ["Linear"]
    assert accelerator.accumulate(model) is accelerator.accumulate(model)  # one stateless context, reused


@pytest.mark.parametrize(
    ("hook", "returned", "expected"),
    [
        ("plait_sync_control", object(), "plait.training.GradientSyncControl"),
        ("plait_collectives", object(), "plait.collectives.Collectives"),
    ],
)
def test_an_object_a_hook_hands_over_must_be_of_the_contract_s_class(hook, returned, expected):
    class Wrong:
        pass

    setattr(Wrong, hook, plait.hookimpl(lambda self, **kwargs: returned, specname=hook))

    with pytest.raises(PluginError, match=rf"{hook} returned 'object': expected a {expected}"):
        Accelerator(cpu=True, plugins=[Wrong()])


def test_a_backend_s_collectives_run_every_collective_of_the_accelerator():
    calls: list[str] = []

    class Counted(Collectives):
        def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
            calls.append("all_gather")
            return torch.cat([tensor, tensor])

        def all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
            calls.append(f"all_reduce {op}")
            return tensor * 2

        def barrier(self) -> None:
            calls.append("barrier")

    class Backend:
        @plait.hookimpl
        def plait_collectives(self, config: Any, environment: Any, device: Any) -> Collectives:
            return Counted(environment, device)

    accelerator = Accelerator(cpu=True, plugins=[Backend()])

    assert accelerator.gather({"x": torch.tensor([1.0])})["x"].tolist() == [1.0, 1.0]
    assert accelerator.reduce(torch.tensor([3.0]), "sum").tolist() == [6.0]
    assert accelerator.reduce(torch.tensor([3.0]), "none").tolist() == [3.0]
    accelerator.wait_for_everyone()
    with accelerator.main_process_first():
        pass
    assert calls == ["all_gather", "all_reduce sum", "barrier", "barrier"]


def test_a_wrapper_acts_around_the_backend_and_sees_its_answer():
    seen: list[Any] = []

    class Around:
        @plait.hookimpl(wrapper=True)
        def plait_wrap_optimizer(self, accelerator: Any, optimizer: Any) -> Any:
            seen.append(type(optimizer).__name__)
            wrapped = yield
            seen.append(type(wrapped).__name__)
            return wrapped

    accelerator = Accelerator(cpu=True, plugins=[Around()])
    model = torch.nn.Linear(2, 1)
    optimizer = accelerator.prepare_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))

    assert seen == ["SGD", "AcceleratedOptimizer"]
    assert accelerator.prepared.optimizers == (optimizer,)


def test_the_registry_of_prepared_objects_is_read_only():
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(torch.nn.Linear(2, 1), torch.optim.SGD([torch.zeros(1, requires_grad=True)]))

    assert accelerator.prepared.models == (model,)
    assert accelerator.prepared.optimizers == (optimizer,)
    assert isinstance(accelerator.prepared.models, tuple)
    with pytest.raises(AttributeError):
        accelerator.prepared.models = ()  # type: ignore[misc]
    accelerator.free_memory()
    assert accelerator.prepared.models == () and model not in accelerator.prepared
