"""Backend ``toy``: one process, its own validated options, its own precision, launcher and questions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from plait import hookimpl
from plait.errors import ConfigError

NAME = "toy"


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    """The ``toy:`` config section."""

    #: Multiplies every loss before backward.
    loss_scale: float = 1.0
    #: A free-form label, reported back by the backend.
    label: str = "plain"


_FIELDS = tuple(f.name for f in dataclasses.fields(ToyOptions))


@hookimpl
def plait_backend_options(backend: str, options: Any) -> ToyOptions | None:
    if backend != NAME:
        return None
    if isinstance(options, ToyOptions):
        return options
    unknown = [key for key in options if key not in _FIELDS]
    if unknown:
        raise ConfigError(f"toy: unknown option {unknown[0]!r}: expected some of {', '.join(_FIELDS)}")
    return ToyOptions(**options)


@hookimpl
def plait_precision(accelerator: Any) -> Any:
    from plait_toy.precision import ToyPrecision

    return ToyPrecision(accelerator.device, accelerator.backend_options.loss_scale)


@hookimpl
def plait_launch(config: Any, command: Sequence[str]) -> int | None:
    if config.backend != NAME:
        return None
    import os
    import subprocess
    import sys

    return subprocess.call([sys.executable, *command], env={**os.environ, "PLAIT_BACKEND": NAME})


@hookimpl
def plait_launch_options() -> dict[str, list[Any]]:
    import click

    return {
        NAME: [
            click.Option(["--toy-loss-scale", "loss_scale"], type=float, default=None, help="Scale every loss."),
            click.Option(["--toy-label", "label"], type=click.Choice(["plain", "fancy"]), default=None),
        ]
    }


@hookimpl
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    if backend != NAME:
        return None
    return {
        "loss_scale": ask("Scale every loss by?", default=1.0, type=float),
        "label": ask("Label?", default="plain", choices=["plain", "fancy"]),
    }
