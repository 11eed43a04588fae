"""Core's checkpoint format for models and optimizers: safetensors weights and optimizer tensors, the rest
of the optimizer's state with ``torch.save``, written by the main process (what every backend that does not
shard state uses)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from plait.checkpoint.tensor_files import (
    check_compatible,
    join_tensors,
    load_safetensors,
    split_shared,
    split_tensors,
    state_dict_to_safetensors,
)

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
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


def read_optimizer_state(directory: str | Path, index: int) -> dict[str, Any]:
    """What :func:`write_optimizer_state` wrote."""
    tensors_file, rest_file = optimizer_files(index)
    skeleton = torch.load(Path(directory) / rest_file, map_location="cpu", weights_only=True)
    state: dict[str, Any] = join_tensors(skeleton, load_safetensors(Path(directory) / tensors_file))
    return state


def save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> None:
    """The model's weights from the main process; mid-accumulation, each process's gradients too."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tensors, metadata = state_dict_to_safetensors(state)
        writer.save_safetensors(model_file(index), tensors, metadata)
    if not accelerator.sync_gradients:
        # Saved mid-accumulation: the gradients summed so far are part of the exact state, and until
        # they synchronise they differ between processes, so each process saves its own.
        inner = accelerator.unwrap_model(model)
        grads = {n: p.grad.detach().contiguous() for n, p in inner.named_parameters() if p.grad is not None}
        if grads:
            writer.save_safetensors(gradients_file(index, accelerator.process_index), grads)


def load_model(accelerator: Accelerator, model: torch.nn.Module, directory: str, index: int, strict: bool) -> None:
    """Load what :func:`save_model` wrote, after checking every key and shape."""
    path = Path(directory) / model_file(index)
    state = load_safetensors(path)
    target = accelerator.unwrap_model(model)
    check_compatible(target, state, f"checkpoint file {path}", strict)
    grads_path = Path(directory) / gradients_file(index, accelerator.process_index)
    grads = load_safetensors(grads_path) if grads_path.is_file() else {}
    target.load_state_dict(state, strict=strict)
    for name, parameter in target.named_parameters():
        if name in grads:
            parameter.grad = grads[name].to(device=parameter.device, dtype=parameter.dtype)


def save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> None:
    """The optimizer's state dict, from the main process."""
    state = optimizer.state_dict()
    if accelerator.is_main_process:
        write_optimizer_state(writer, index, state)


def load_optimizer(optimizer: Any, directory: str, index: int) -> None:
    """Load what :func:`save_optimizer` wrote."""
    optimizer.load_state_dict(read_optimizer_state(directory, index))
