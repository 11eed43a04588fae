"""The ``Accelerator(...)`` arguments that are config keys: only those the user passed override the config."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

_P = ParamSpec("_P")
_T = TypeVar("_T")


def recording_given_arguments(init: Callable[Concatenate[_T, _P], None]) -> Callable[Concatenate[_T, _P], None]:
    """Decorate ``__init__`` to record which arguments the caller passed, by name, in ``self._given``
    (before ``__init__`` runs), keeping its signature for introspection: an argument passed wins over
    the config file even when it equals its default."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def init_recording(self: _T, *args: _P.args, **kwargs: _P.kwargs) -> None:
        self._given = dict(signature.bind(self, *args, **kwargs).arguments)  # type: ignore[attr-defined]
        init(self, *args, **kwargs)

    return cast("Callable[Concatenate[_T, _P], None]", init_recording)


def _name(value: Any) -> str:
    return str(getattr(value, "value", value))  # an enum member (HF Accelerate's PrecisionType) or a string


#: Accelerator arguments that are config keys, and how a value passed is turned into the key's.
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {
    "backend": str,
    "mixed_precision": _name,
    "gradient_accumulation_steps": lambda value: value,
    "cpu": bool,
    "split_batches": bool,
    "even_batches": bool,
    "device_placement": bool,
    "step_scheduler_with_optimizer": bool,
    "project_dir": os.fspath,
}
#: Arguments whose ``None`` means "not given" (HF Accelerate's: the config or the environment decides).
_NONE_IS_UNSET = ("backend", "mixed_precision", "project_dir")


def config_arguments(given: Mapping[str, Any], tracker_names: list[str]) -> dict[str, Any]:
    """Config values for the arguments in ``given`` (those the caller passed, even at their default
    value), so that they win over ``PLAIT_*`` variables and the config file; the tracker names of
    ``log_with`` as ``log_with``."""
    arguments: dict[str, Any] = {}
    for name, convert in _CONVERSIONS.items():
        if name in given and not (given[name] is None and name in _NONE_IS_UNSET):
            arguments[name] = convert(given[name])
    if tracker_names:
        arguments["log_with"] = tuple(tracker_names)
    return arguments
