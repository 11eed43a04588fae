"""The ``Accelerator(...)`` arguments that are config keys: only those the user passed override the config."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any


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
