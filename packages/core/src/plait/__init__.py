"""plait: one PyTorch training loop on any hardware, through small pluggy plugins.

``import plait`` is cheap: ``Accelerator`` and the torch-dependent names are
imported on first use, so that listing plugins and the command line never pay
for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.lazy_names import lazy_names
from plait.plugins.markers import hookimpl, hookspec

__version__ = "0.1.0"

_LAZY = {
    "Accelerator": "plait.accelerator",
    "ProjectConfiguration": "plait.project",
    "set_seed": "plait.random",
    "DistributedType": "plait.process.environment",
    "ProcessEnvironment": "plait.process.environment",
    "GeneralTracker": "plait.tracking",
    "Precision": "plait.precision",
    "PreparedObjects": "plait.training.registry",
    "Config": "plait.config",
    "skip_first_batches": "plait.data.skipping",
    "list_plugins": "plait.plugins.discovery",
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
    from plait.data.skipping import skip_first_batches
    from plait.errors import CheckpointError, ConfigError, PluginError
    from plait.plugins.discovery import list_plugins
    from plait.precision import Precision
    from plait.process.environment import DistributedType, ProcessEnvironment
    from plait.project import ProjectConfiguration
    from plait.random import set_seed
    from plait.tracking import GeneralTracker
    from plait.training.registry import PreparedObjects


__getattr__, _ = lazy_names(globals(), _LAZY)


def __dir__() -> list[str]:
    return sorted(__all__)
