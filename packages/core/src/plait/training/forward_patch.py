"""Core's mixed-precision ``forward`` patch of a prepared model, and undoing it (``unwrap_model``)."""

from __future__ import annotations

from typing import Any

_ORIGINAL_FORWARD = "_plait_original_forward"


def patch_forward(model: Any, wrap: Any) -> None:
    """Replace ``model.forward`` by ``wrap(model.forward)``, remembering how to undo it."""
    if _ORIGINAL_FORWARD in model.__dict__:
        return
    original = model.__dict__.get("forward")
    object.__setattr__(model, _ORIGINAL_FORWARD, original)
    model.forward = wrap(model.forward)


def unpatch_forward(model: Any) -> None:
    """Undo :func:`patch_forward`."""
    if _ORIGINAL_FORWARD not in model.__dict__:
        return
    original = model.__dict__.pop(_ORIGINAL_FORWARD)
    if original is None:
        del model.forward
    else:
        model.forward = original
