"""The small states of ``load_state``, read and checked against their targets before anything in memory changes,
then applied: schedulers, dataloader positions, registered objects, the scaler, RNG states, the counters.

A checkpoint is loaded all or nothing: :func:`read_states` raises
:class:`~plait.errors.CheckpointError` ("nothing was loaded") for the first state that does not fit, and
changes nothing; :func:`apply_states` runs only after every model and optimizer was checked too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from plait.checkpoint.default_state import check_class
from plait.checkpoint.safe_values import decode
from plait.errors import CheckpointError

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.checkpoint.reader import CheckpointReader


_T = TypeVar("_T")


def agreed(accelerator: Accelerator, check: Callable[[], _T]) -> _T:
    """Run ``check`` on every process; raise on every process if it failed on any (each process reads files
    of its own, and one that went on to load would wait forever in the others' collectives)."""
    if accelerator.process.num_processes == 1:
        return check()
    failure: BaseException | None = None
    result: Any = None
    try:
        result = check()
    except Exception as exc:
        failure = exc
    mine = None if failure is None else str(failure) if isinstance(failure, CheckpointError) else repr(failure)
    errors = accelerator.collectives.gather_objects(mine)
    me = accelerator.process.process_index
    others = [f"process {rank} refused it: {error}" for rank, error in enumerate(errors) if error and rank != me]
    if failure is not None and not others:
        raise failure
    if others:
        reasons = ([f"this process (process {me}) refused it: {mine}"] if mine else []) + others
        raise CheckpointError(f"every process refuses the checkpoint when one does; {'; '.join(reasons)}") from failure
    return result  # type: ignore[no-any-return]


def state_file(stem: str, index: int, suffix: str = "pt") -> str:
    """``scheduler.pt`` for the first, ``scheduler_<index>.pt`` for later ones."""
    return f"{stem}.{suffix}" if index == 0 else f"{stem}_{index}.{suffix}"


@dataclass
class SmallStates:
    """What :func:`read_states` read, checked, for :func:`apply_states`."""

    schedulers: list[Any]
    dataloaders: list[Any]
    customs: list[Any]
    scaler: Any
    rng: Any
    step: int
    iteration: int


def _refuse(checkpoint: CheckpointReader, problem: str, fix: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {checkpoint.directory}: {problem}; nothing was loaded ({fix})")


def metadata_int(checkpoint: CheckpointReader, key: str, default: int) -> int:
    """``metadata[key]``, an integer, or a :class:`~plait.errors.CheckpointError` naming the manifest."""
    value = checkpoint.metadata.get(key, default)
    if type(value) is not int:
        raise CheckpointError(
            f"checkpoint manifest {checkpoint.directory / 'plait_checkpoint.json'} is malformed: metadata {key!r} is "
            f"{value!r}, expected an integer; nothing was loaded"
        )
    return value


def saved_models(checkpoint: CheckpointReader, count: int) -> list[int]:
    """The indices of the models the checkpoint holds (a save pre-hook may have kept some out)."""
    saved = checkpoint.metadata.get("saved_models", list(range(count)))
    if not (isinstance(saved, list) and all(type(i) is int for i in saved)):
        raise CheckpointError(
            f"checkpoint manifest {checkpoint.directory / 'plait_checkpoint.json'} is malformed: metadata "
            f"'saved_models' is {saved!r}, expected a list of model indices; nothing was loaded"
        )
    return saved


def read_states(accelerator: Accelerator, checkpoint: CheckpointReader, custom_objects: list[Any]) -> SmallStates:
    """Read every small state and check it against its target; change nothing."""
    prepared = accelerator.prepared
    dataloaders = [
        _dataloader_state(checkpoint, i, d) if hasattr(d, "load_state_dict") else None
        for i, d in enumerate(prepared.dataloaders)
    ]
    check_world_size(accelerator, checkpoint, dataloaders)
    schedulers = [_scheduler_state(checkpoint, i, s) for i, s in enumerate(prepared.schedulers)]
    customs = []
    for i, obj in enumerate(custom_objects):
        check_class(checkpoint, "custom_object_classes", i, obj, "registered object")
        customs.append(decode(checkpoint.torch_load(f"custom_checkpoint_{i}.pt")))
    scaler = _scaler_state(accelerator, checkpoint) if checkpoint.has("scaler.pt") else None
    rng_file = f"random_states_{accelerator.process.process_index}.pt"
    rng = checkpoint.torch_load(rng_file) if checkpoint.has(rng_file) else None
    if rng is not None:
        _check_rng(checkpoint, rng_file, rng)
    return SmallStates(schedulers, dataloaders, customs, scaler, rng, metadata_int(checkpoint, "step", 0),
                       metadata_int(checkpoint, "iteration", 0))


def check_world_size(accelerator: Accelerator, checkpoint: CheckpointReader, dataloaders: list[Any]) -> None:
    """Refuse a dataloader position saved mid-epoch by another number of processes: positions count each
    process's batches, so the same number would mean other batches. At an epoch boundary it is fine."""
    saved = checkpoint.metadata.get("num_processes")
    current = accelerator.process.num_processes
    if saved is None or saved == current:
        return
    for i, state in enumerate(dataloaders):
        position = state.get("position", 0) if isinstance(state, dict) else 0
        if isinstance(position, int) and position > 0:
            raise _refuse(
                checkpoint,
                f"it was saved by {saved} processes and this run has {current}: dataloader {i} was saved mid-epoch "
                f"(epoch {state.get('epoch')}, {position} batches into each process's share), which means other "
                f"batches with {current} processes",
                f"resume with {saved} processes, or from a checkpoint saved at the end of an epoch",
            )


def _dataloader_state(checkpoint: CheckpointReader, index: int, dataloader: Any) -> Any:
    state = decode(checkpoint.torch_load(state_file("dataloader", index)))
    target = dataloader.state_dict() if hasattr(dataloader, "state_dict") else None
    if isinstance(target, dict):
        if not isinstance(state, dict):
            raise _refuse(checkpoint, f"dataloader {index}'s state is a {type(state).__name__}, expected a dict",
                          "save and load the same dataloaders")
        for key, value in target.items():
            if key not in state or (type(value) is int and type(state[key]) is not int):
                raise _refuse(checkpoint, f"dataloader {index}'s state has {key!r} = {state.get(key)!r}, expected "
                              f"{type(value).__name__}", "save and load the same dataloaders")
    return state


def _scheduler_state(checkpoint: CheckpointReader, index: int, scheduler: Any) -> Any:
    check_class(checkpoint, "scheduler_classes", index, scheduler, "scheduler")
    state = decode(checkpoint.torch_load(state_file("scheduler", index)))
    expected = scheduler.state_dict()
    missing = [key for key in expected if key not in state] if isinstance(state, dict) else list(expected)
    if missing:
        raise _refuse(checkpoint, f"scheduler {index}'s state lacks {missing[:5]}", "build the same scheduler as the "
                      "run that saved it")
    return state


def _scaler_state(accelerator: Accelerator, checkpoint: CheckpointReader) -> Any:
    state = checkpoint.torch_load("scaler.pt")
    expected = accelerator.precision.state_dict()
    if expected is None:
        return state  # no scaler here (full precision, bf16): the saved one has no target
    missing = [key for key in expected if key not in state] if isinstance(state, dict) else list(expected)
    if missing:
        raise _refuse(checkpoint, f"the gradient scaler's state in scaler.pt lacks {missing}",
                      "load a checkpoint saved with the same mixed precision")
    return state


def _check_rng(checkpoint: CheckpointReader, name: str, state: Any) -> None:
    try:
        python, numpy_state, generator = state["python"], state["numpy"], state["torch"]
        fits = (
            {"version", "state", "gauss"} <= python.keys() and isinstance(python["state"], torch.Tensor)
            and python["state"].numel() == 625
            and {"kind", "keys", "pos", "has_gauss", "cached_gaussian"} <= numpy_state.keys()
            and isinstance(numpy_state["keys"], torch.Tensor) and numpy_state["keys"].numel() == 624
            and isinstance(generator, torch.Tensor) and generator.shape == torch.get_rng_state().shape
        )
    except (KeyError, TypeError, AttributeError):
        fits = False
    if not fits:
        raise _refuse(checkpoint, f"{name} is not the RNG state save_state writes", "load a checkpoint save_state wrote")


def apply_states(accelerator: Accelerator, checkpoint: CheckpointReader, states: SmallStates,
                 custom_objects: list[Any]) -> None:
    """Load the checked states into their targets (after the models and optimizers)."""
    from plait.random import set_rng_states

    prepared = accelerator.prepared
    for scheduler, state in zip(prepared.schedulers, states.schedulers):
        scheduler.load_state_dict(state)
    for dataloader, state in zip(prepared.dataloaders, states.dataloaders):
        if state is not None:
            dataloader.load_state_dict(state)
    for obj, state in zip(custom_objects, states.customs):
        obj.load_state_dict(state)
    if states.scaler is not None:
        accelerator.precision.load_state_dict(states.scaler)
    gradient_state = accelerator.gradient_state
    gradient_state.step = states.step
    # As after the saved run's last micro-step (a checkpoint saved between micro-steps resumes mid-accumulation):
    # what reads it before the next accumulate() (the xla backend's graph cut before a batch) sees the same.
    gradient_state.sync_gradients = states.step % gradient_state.num_steps == 0
    if accelerator.project_configuration.automatic_checkpoint_naming:
        accelerator.project_configuration.iteration = states.iteration + 1
    if states.rng is not None:
        set_rng_states(states.rng)
    else:
        warnings.warn(
            f"checkpoint {checkpoint.directory} has no RNG state for process {accelerator.process.process_index} "
            f"(saved by {checkpoint.metadata.get('num_processes')} processes): random streams start afresh",
            stacklevel=3,
        )
