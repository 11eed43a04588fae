"""A plugin with a misspelled hook name: plait must refuse it rather than silently never call it."""

from __future__ import annotations

from typing import Any

from plait import hookimpl


@hookimpl
def plait_wrap_modle(accelerator: Any, model: Any) -> Any:
    return model
