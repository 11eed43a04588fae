"""Models moved to the XLA device, and the optimizers built on their CPU parameters re-bound to the moved ones.

``model.to(xla_device)`` cannot move a CPU parameter in place (the two tensor types do not share an
implementation), so the model gets new ``Parameter`` objects; an optimizer the user built before
``prepare`` (HF Accelerate's usual order) still holds the old ones. Imported from hook bodies only.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from plait.accelerator import Accelerator

#: Per accelerator, each moved parameter's CPU original (by id) and its XLA replacement, until optimizers are bound.
_MOVED: weakref.WeakKeyDictionary[Any, dict[int, tuple[torch.Tensor, torch.nn.Parameter]]] = weakref.WeakKeyDictionary()


def place_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` on ``accelerator.device``; its old parameters remembered for :func:`rebind_optimizer`."""
    before = list(model.parameters())
    model.to(accelerator.device)
    moved = _MOVED.setdefault(accelerator, {})
    for old, new in zip(before, model.parameters()):
        if old is not new:
            moved[id(old)] = (old, new)
    return model


def rebind_optimizer(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> None:
    """Make ``optimizer`` hold the moved parameters in place of the CPU ones (its state follows them)."""
    moved = _MOVED.get(accelerator)
    if not moved:
        return
    for group in optimizer.param_groups:
        group["params"] = [moved[id(p)][1] if id(p) in moved else p for p in group["params"]]
    state = optimizer.state
    for key in list(state):
        if id(key) in moved:
            state[moved[id(key)][1]] = state.pop(key)
