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
    "PartialState": "plait.state",
    "AcceleratorState": "plait.state",
    "GradientState": "plait.state",
    "notebook_launcher": "plait.launchers",
    "debug_launcher": "plait.launchers",
    "find_executable_batch_size": "plait.utils.memory",
    "synchronize_rng_states": "plait.utils.operations",
    "init_empty_weights": "plait.big_modeling",
    "init_on_device": "plait.big_modeling",
    "cpu_offload": "plait.big_modeling",
    "cpu_offload_with_hook": "plait.big_modeling",
    "disk_offload": "plait.big_modeling",
    "dispatch_model": "plait.big_modeling",
    "load_checkpoint_and_dispatch": "plait.big_modeling",
    "infer_auto_device_map": "plait.big_modeling",
    "load_checkpoint_in_model": "plait.big_modeling",
    "prepare_pippy": "plait.utils.unsupported",
    "ParallelismConfig": "plait.utils.unsupported",
    "is_rich_available": "plait.utils.imports",
    "NotSupportedError": "plait.errors",
    "AutocastKwargs": "plait.utils.dataclasses",
    "DataLoaderConfiguration": "plait.utils.dataclasses",
    "DDPCommunicationHookType": "plait.utils.dataclasses",
    "DeepSpeedPlugin": "plait.utils.dataclasses",
    "DistributedDataParallelKwargs": "plait.utils.dataclasses",
    "FullyShardedDataParallelPlugin": "plait.utils.dataclasses",
    "GradScalerKwargs": "plait.utils.dataclasses",
    "InitProcessGroupKwargs": "plait.utils.dataclasses",
    "ProfileKwargs": "plait.utils.dataclasses",
    "GradientAccumulationPlugin": "plait.utils.dataclasses",
    "TorchDynamoPlugin": "plait.utils.dataclasses",
}

__all__ = [
    "Accelerator",
    "AcceleratorState",
    "AutocastKwargs",
    "CheckpointError",
    "Config",
    "ConfigError",
    "DDPCommunicationHookType",
    "DataLoaderConfiguration",
    "DeepSpeedPlugin",
    "DistributedDataParallelKwargs",
    "DistributedType",
    "FullyShardedDataParallelPlugin",
    "GeneralTracker",
    "GradScalerKwargs",
    "GradientAccumulationPlugin",
    "GradientState",
    "InitProcessGroupKwargs",
    "NotSupportedError",
    "ParallelismConfig",
    "PartialState",
    "PluginError",
    "Precision",
    "PreparedObjects",
    "ProcessEnvironment",
    "ProfileKwargs",
    "ProjectConfiguration",
    "TorchDynamoPlugin",
    "__version__",
    "cpu_offload",
    "cpu_offload_with_hook",
    "debug_launcher",
    "disk_offload",
    "dispatch_model",
    "find_executable_batch_size",
    "hookimpl",
    "hookspec",
    "infer_auto_device_map",
    "init_empty_weights",
    "init_on_device",
    "is_rich_available",
    "list_plugins",
    "load_checkpoint_and_dispatch",
    "load_checkpoint_in_model",
    "notebook_launcher",
    "prepare_pippy",
    "set_seed",
    "skip_first_batches",
    "synchronize_rng_states",
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
