"""Configuration: :class:`Config` and its keys (:mod:`~plait.config.settings`), how a run's one config is
resolved from arguments, ``PLAIT_*`` variables and a YAML file (:mod:`~plait.config.resolution`), our
YAML files (:mod:`~plait.config.yaml_files`) and HF Accelerate's (:mod:`~plait.config.accelerate_files`).

A backend's options live in a section named after it (``fsdp:``), validated by that backend's plugin.
"""

from __future__ import annotations

from plait.config.resolution import default_config_path, disabled_plugins, read_environment, resolve_config
from plait.config.settings import (
    ARGUMENT,
    DEFAULT,
    ENV_PREFIX,
    ENVIRONMENT,
    FILE,
    KEYS,
    KNOWN_BACKENDS,
    MIXED_PRECISION_CHOICES,
    Config,
    backend_section,
    coerce,
    section_names,
)

__all__ = [
    "ARGUMENT",
    "DEFAULT",
    "ENVIRONMENT",
    "ENV_PREFIX",
    "FILE",
    "KEYS",
    "KNOWN_BACKENDS",
    "MIXED_PRECISION_CHOICES",
    "Config",
    "backend_section",
    "coerce",
    "default_config_path",
    "disabled_plugins",
    "read_environment",
    "resolve_config",
    "section_names",
]
