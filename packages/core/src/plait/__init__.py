"""plait: one PyTorch training loop on any hardware, through small pluggy plugins.

``import plait`` is cheap: ``Accelerator`` and the torch-dependent names are
imported on first use, so that listing plugins and the command line never pay
for torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from plait._markers import hookimpl, hookspec

__version__ = "0.1.0"

_LAZY = {
    "Accelerator": "plait.accelerator",
    "ProjectConfiguration": "plait.project",
    "set_seed": "plait.random",
    "DistributedType": "plait.environment",
    "ProcessEnvironment": "plait.environment",
    "GeneralTracker": "plait.tracking",
    "Precision": "plait.precision",
    "PreparedObjects": "plait.wrapping",
    "Config": "plait.config",
    "skip_first_batches": "plait.data",
    "list_plugins": "plait.plugins",
    "ConfigError": "plait.errors",
    "PluginError": "plait.errors",
    "CheckpointError": "plait.errors",
}

__all__ = [
    "Accelerator",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DistributedType",
    "GeneralTracker",
    "PluginError",
    "Precision",
    "PreparedObjects",
    "ProcessEnvironment",
    "ProjectConfiguration",
    "__version__",
    "hookimpl",
    "hookspec",
    "list_plugins",
    "set_seed",
    "skip_first_batches",
]

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.config import Config
    from plait.data import skip_first_batches
    from plait.environment import DistributedType, ProcessEnvironment
    from plait.errors import CheckpointError, ConfigError, PluginError
    from plait.plugins import list_plugins
    from plait.precision import Precision
    from plait.project import ProjectConfiguration
    from plait.random import set_seed
    from plait.tracking import GeneralTracker
    from plait.wrapping import PreparedObjects


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plait' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
