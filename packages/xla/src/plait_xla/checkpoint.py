"""Models and optimizers in core's checkpoint format, written as CPU tensors: the graph is executed
first (``torch_xla.sync()``), then every XLA tensor is copied to the host. Loading is core's: a CPU
state dict loads into XLA parameters, and torch moves optimizer state to its parameters' device.
Imported from hook bodies only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from plait.checkpoint import default_state
from plait.checkpoint.default_state import write_optimizer_state

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointWriter


def to_cpu(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples) with every tensor copied to the CPU, after the pending graph ran."""
    import torch_xla

    torch_xla.sync()
    return _copy(value)


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(item) for item in value)
    return value


def state_dict(accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any]:
    """The model's full state dict on the CPU (under SPMD, sharded tensors come back whole)."""
    inner = accelerator.unwrap_model(model) if unwrap else model
    return to_cpu(inner.state_dict())  # type: ignore[no-any-return]


def save_model(accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> None:
    """Core's files (the weights come back as CPU tensors from ``get_state_dict``), the gradients saved
    mid-accumulation copied to the host."""
    default_state.save_model(accelerator, model, writer, index, to_host=to_cpu)


def save_optimizer(accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> None:
    """Core's files for the optimizer's state, from the main process, as CPU tensors."""
    state = to_cpu(optimizer.state_dict())
    if accelerator.is_main_process:
        write_optimizer_state(writer, index, state)
