"""What joint wrapping returns, and core's mixed-precision ``forward`` patch of a model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

_ORIGINAL_FORWARD = "_plait_original_forward"


class PreparedObjects:
    """Replacements chosen by ``plait_prepare_jointly``: each original object (by identity) to its prepared one."""

    def __init__(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        self._by_id = {id(original): (original, prepared) for original, prepared in pairs}

    def __contains__(self, original: Any) -> bool:
        return id(original) in self._by_id

    def get(self, original: Any) -> Any:
        """The prepared replacement of ``original``."""
        return self._by_id[id(original)][1]


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
