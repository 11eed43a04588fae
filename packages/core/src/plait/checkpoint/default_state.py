"""Core's checkpoint format for models and optimizers: safetensors weights and optimizer tensors, the rest
of the optimizer's state with ``torch.save``, written by the main process (what every backend that does not
shard state uses); the checks that refuse, before anything is loaded, a state that does not fit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from plait.checkpoint.tensor_files import (
    check_compatible,
    check_shapes,
    join_tensors,
    load_safetensors,
    split_shared,
    split_tensors,
    state_dict_to_safetensors,
    tensor_ref,
)
from plait.errors import CheckpointError

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.checkpoint.reader import CheckpointReader
    from plait.checkpoint.writer import CheckpointWriter


def model_file(index: int) -> str:
    """The weights of the ``index``-th prepared model."""
    return "model.safetensors" if index == 0 else f"model_{index}.safetensors"


def gradients_file(index: int, process_index: int) -> str:
    """Gradients accumulated so far by a process, when saved between micro-steps."""
    stem = "gradients" if index == 0 else f"gradients_{index}"
    return f"{stem}.safetensors" if process_index == 0 else f"{stem}_rank{process_index}.safetensors"


def optimizer_files(index: int) -> tuple[str, str]:
    """The optimizer's tensors (safetensors) and the rest of its state dict (``torch.save``)."""
    stem = "optimizer" if index == 0 else f"optimizer_{index}"
    return f"{stem}.safetensors", f"{stem}.pt"


def write_optimizer_state(writer: CheckpointWriter, index: int, state: dict[str, Any]) -> None:
    """Write an optimizer state dict: its tensors as safetensors (no pickle), the rest with ``torch.save``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = split_tensors(state, tensors)
    unique, aliases = split_shared(tensors)
    tensors_file, rest_file = optimizer_files(index)
    writer.save_safetensors(tensors_file, unique, {"format": "pt", "plait_aliases": json.dumps(aliases)})
    writer.torch_save(rest_file, skeleton)


def read_optimizer_state(checkpoint: CheckpointReader | str | Path, index: int) -> dict[str, Any]:
    """What :func:`write_optimizer_state` wrote, read through the verified ``checkpoint`` (a directory is
    read through the same restricted loaders, unverified: pass the reader)."""
    tensors_file, rest_file = optimizer_files(index)
    if isinstance(checkpoint, str | Path):
        from plait.checkpoint.reader import safe_torch_load

        skeleton = safe_torch_load(Path(checkpoint) / rest_file)
        tensors = load_safetensors(Path(checkpoint) / tensors_file)
    else:
        skeleton = checkpoint.torch_load(rest_file)
        tensors = checkpoint.load_safetensors(tensors_file)
    state: dict[str, Any] = join_tensors(skeleton, tensors)
    return state


def class_name(obj: Any) -> str:
    """``module.qualname`` of ``obj``'s class, of the optimizer or scheduler plait's wrapper holds: what the
    manifest records of each optimizer, scheduler and registered object, to check it when loading."""
    from plait.training.optimizer import AcceleratedOptimizer
    from plait.training.scheduler import AcceleratedScheduler

    while isinstance(obj, AcceleratedOptimizer | AcceleratedScheduler):
        obj = obj.optimizer if isinstance(obj, AcceleratedOptimizer) else obj.scheduler
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


def same_class(recorded: Any, current: str) -> bool:
    """Whether a recorded :func:`class_name` names the class ``current`` names; a script's ``__main__`` matches
    any module, so that a class defined in a script matches itself imported from it as a module."""
    if recorded == current or not isinstance(recorded, str):
        return bool(recorded == current)
    for one, other in ((recorded, current), (current, recorded)):
        if one.startswith("__main__.") and other.endswith("." + one.removeprefix("__main__.")):
            return True
    return False


def check_class(checkpoint: CheckpointReader, key: str, index: int, obj: Any, what: str) -> None:
    """Refuse when the manifest's ``metadata[key][index]`` names another class than ``obj``'s (a checkpoint
    that does not record it passes)."""
    recorded = checkpoint.metadata.get(key)
    if isinstance(recorded, list) and index < len(recorded) and not same_class(recorded[index], class_name(obj)):
        raise CheckpointError(
            f"checkpoint {checkpoint.directory}: {what} {index} was saved from a {recorded[index]} but this "
            f"accelerator's is a {class_name(obj)}; nothing was loaded (build the same {what} as the run that saved it)"
        )


def core_checks(accelerator: Accelerator, kind: str) -> bool:
    """Whether core's ``plait_check_<kind>`` applies: every plugin that loads ``kind`` its own way also checks it
    (a plugin that loads but predates the check hooks is loaded unchecked, as the hook spec says)."""
    hook = accelerator.plugin_manager.hook
    def plugins(name: str) -> set[int]:
        return {id(impl.plugin) for impl in getattr(hook, name).get_hookimpls()
                if not impl.wrapper and not impl.hookwrapper and getattr(impl.plugin, "__name__", "") != "plait.builtin"}

    return plugins(f"plait_load_{kind}") <= plugins(f"plait_check_{kind}")


def save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int,
               to_host: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
    """The model's weights from the main process; mid-accumulation, each process's gradients too, through
    ``to_host`` first where they live on a device safetensors cannot read (XLA's)."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tensors, metadata = state_dict_to_safetensors(state)
        writer.save_safetensors(model_file(index), tensors, metadata)
    if not accelerator.sync_gradients:
        # Saved mid-accumulation: the gradients summed so far are part of the exact state, and until
        # they synchronise they differ between processes, so each process saves its own.
        inner = accelerator.unwrap_model(model)
        grads = {n: p.grad.detach() for n, p in inner.named_parameters() if p.grad is not None}
        grads = {n: g.contiguous() for n, g in (to_host(grads) if to_host else grads).items()}
        if grads:
            writer.save_safetensors(gradients_file(index, accelerator.process_index), grads)


def check_model(accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int,
                strict: bool) -> None:
    """Refuse, from the files' headers, what :func:`load_model` would not load: keys and shapes of the weights
    and of this process's gradients."""
    name = model_file(index)
    target = accelerator.unwrap_model(model)
    expected = {key: tuple(tensor.shape) for key, tensor in target.state_dict().items()}
    check_shapes(expected, checkpoint.safetensors_shapes(name), f"checkpoint file {checkpoint.path(name)}", strict)
    grads = gradients_file(index, accelerator.process_index)
    if checkpoint.has(grads):
        parameters = {key: tuple(p.shape) for key, p in target.named_parameters()}
        check_shapes(parameters, checkpoint.safetensors_shapes(grads), f"checkpoint file {checkpoint.path(grads)}", False)


def load_model(accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int,
               strict: bool) -> None:
    """Load what :func:`save_model` wrote, after checking every key and shape."""
    name = model_file(index)
    state = checkpoint.load_safetensors(name)
    target = accelerator.unwrap_model(model)
    check_compatible(target, state, f"checkpoint file {checkpoint.path(name)}", strict)
    grads_file = gradients_file(index, accelerator.process_index)
    grads = checkpoint.load_safetensors(grads_file) if checkpoint.has(grads_file) else {}
    target.load_state_dict(state, strict=strict)
    for key, parameter in target.named_parameters():
        if key in grads:
            parameter.grad = grads[key].to(device=parameter.device, dtype=parameter.dtype)


def save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> None:
    """The optimizer's state dict, from the main process."""
    state = optimizer.state_dict()
    if accelerator.is_main_process:
        write_optimizer_state(writer, index, state)


def check_optimizer(optimizer: Any, checkpoint: CheckpointReader, index: int) -> None:
    """Refuse what :func:`load_optimizer` would load wrongly or half: another optimizer class, other parameter
    groups, state tensors of other shapes."""
    check_class(checkpoint, "optimizer_classes", index, optimizer, "optimizer")
    tensors_file, rest_file = optimizer_files(index)
    skeleton = checkpoint.torch_load(rest_file)
    check_optimizer_state(optimizer, skeleton, checkpoint.safetensors_shapes(tensors_file),
                          f"checkpoint file {checkpoint.path(rest_file)}")


def check_optimizer_state(optimizer: Any, saved: Any, shapes: dict[str, tuple[int, ...]], source: str) -> None:
    """Refuse a saved optimizer state dict (tensors split out as by :func:`write_optimizer_state`, their shapes
    in ``shapes``) that does not fit ``optimizer``: its parameter groups, the number of parameters in each,
    and each state tensor's shape against its parameter where both have as many dimensions."""
    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"{source}: {problem}; nothing was loaded (build the optimizer as the run that saved it)")

    if not (isinstance(saved, dict) and isinstance(saved.get("state"), dict)
            and isinstance(saved.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in saved["param_groups"])):
        raise refuse("it is not an optimizer state dict (with 'state' and 'param_groups' of 'params')")
    groups, saved_groups = optimizer.param_groups, saved["param_groups"]
    if len(saved_groups) != len(groups):
        raise refuse(f"it holds {len(saved_groups)} parameter groups but the optimizer has {len(groups)}")
    parameters: dict[Any, torch.Tensor] = {}
    for g, (group, saved_group) in enumerate(zip(groups, saved_groups)):
        if len(saved_group["params"]) != len(group["params"]):
            raise refuse(f"parameter group {g} holds {len(saved_group['params'])} parameters but the optimizer's "
                         f"has {len(group['params'])}")
        parameters.update(zip(saved_group["params"], group["params"]))
    for key, entries in saved["state"].items():
        if key not in parameters or not isinstance(entries, dict):
            raise refuse(f"it holds state for parameter {key!r}, which none of its parameter groups lists")
        parameter = parameters[key]
        for name, value in entries.items():
            ref = tensor_ref(value)
            if ref is None:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            elif ref in shapes:
                shape = shapes[ref]
            else:
                raise refuse(f"the state {name!r} of parameter {key!r} is missing from its tensors file")
            if shape is not None and len(shape) == parameter.dim() and shape != tuple(parameter.shape):
                raise refuse(f"the state {name!r} of parameter {key!r} has shape {shape} but the parameter's is "
                             f"{tuple(parameter.shape)}")


def load_optimizer(optimizer: Any, checkpoint: CheckpointReader, index: int) -> None:
    """Load what :func:`save_optimizer` wrote."""
    optimizer.load_state_dict(read_optimizer_state(checkpoint, index))
