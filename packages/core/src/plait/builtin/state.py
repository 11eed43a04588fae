"""State-saving defaults: safetensors model weights and ``torch.save`` optimizer state, from the main process."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from plait._markers import hookimpl

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointWriter


def model_file(index: int) -> str:
    return "model.safetensors" if index == 0 else f"model_{index}.safetensors"


def gradients_file(index: int, process_index: int) -> str:
    stem = "gradients" if index == 0 else f"gradients_{index}"
    return f"{stem}.safetensors" if process_index == 0 else f"{stem}_rank{process_index}.safetensors"


def optimizer_files(index: int) -> tuple[str, str]:
    """The optimizer's tensors (safetensors) and the rest of its state dict (``torch.save``)."""
    stem = "optimizer" if index == 0 else f"optimizer_{index}"
    return f"{stem}.safetensors", f"{stem}.pt"


@hookimpl(trylast=True)
def plait_get_state_dict(accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any]:
    if unwrap:
        model = accelerator.unwrap_model(model)
    return model.state_dict()


@hookimpl(trylast=True)
def plait_save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> bool:
    from plait.serialization import state_dict_to_safetensors

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
    return True


@hookimpl(trylast=True)
def plait_load_model(accelerator: Accelerator, model: torch.nn.Module, directory: str, index: int, strict: bool) -> bool:
    from pathlib import Path

    from plait.serialization import check_compatible, load_safetensors

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
    return True


@hookimpl(trylast=True)
def plait_save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> bool:
    from plait.serialization import split_shared, split_tensors

    state = optimizer.state_dict()
    if accelerator.is_main_process:
        tensors: dict[str, Any] = {}
        skeleton = split_tensors(state, tensors)
        unique, aliases = split_shared(tensors)
        tensors_file, rest_file = optimizer_files(index)
        writer.save_safetensors(tensors_file, unique, {"format": "pt", "plait_aliases": json.dumps(aliases)})
        writer.torch_save(rest_file, skeleton)
    return True


@hookimpl(trylast=True)
def plait_load_optimizer(accelerator: Accelerator, optimizer: Any, directory: str, index: int) -> bool:
    from pathlib import Path

    import torch

    from plait.serialization import join_tensors, load_safetensors

    tensors_file, rest_file = optimizer_files(index)
    skeleton = torch.load(Path(directory) / rest_file, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(join_tensors(skeleton, load_safetensors(Path(directory) / tensors_file)))
    return True
