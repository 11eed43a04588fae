"""Resolving the one configuration of a run; the only module that reads ``PLAIT_*`` variables.

Highest first: ``Accelerator(...)`` arguments (or ``plait launch`` flags), ``PLAIT_*``
environment variables, the YAML file (``PLAIT_CONFIG_FILE``, else
:func:`default_config_path`), defaults. Every value set records where it came from
(:attr:`Config.sources`), for the choices that weigh one source against another and
for messages that name them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from plait.config.settings import ARGUMENT, ENV_PREFIX, ENVIRONMENT, FILE, KEYS, Config, coerce, section_names
from plait.errors import ConfigError, closest

#: Variables that are not config keys but are read here.
_SPECIAL_ENV = {"PLAIT_CONFIG_FILE", "PLAIT_DISABLE_PLUGINS", "PLAIT_AUTOLOAD_PLUGINS"}


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``plait config`` writes and every run reads by default (under ``XDG_CONFIG_HOME``)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "plait" / "default_config.yaml"


def disabled_plugins(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Plugin names blocked by ``PLAIT_DISABLE_PLUGINS=a,b``."""
    return tuple(p.strip() for p in environ.get("PLAIT_DISABLE_PLUGINS", "").split(",") if p.strip())


def read_environment(
    environ: Mapping[str, str], sections: tuple[str, ...], where: dict[str, str] | None = None
) -> dict[str, Any]:
    """Config values from ``PLAIT_<KEY>`` variables; ``PLAIT_<SECTION>`` holds a JSON object.

    :param where: filled with the variable each key came from.
    """
    values: dict[str, Any] = {}
    section_values: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _SPECIAL_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in KEYS:
            values[key] = coerce(key, raw, f"environment variable {name}")
            if where is not None:
                where[key] = f"environment variable {name}={raw}"
        elif key in sections:
            try:
                parsed = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"environment variable {name}={raw!r} is not valid JSON ({exc.msg}): "
                    f"expected an object of {key} options, e.g. {name}='{{\"option\": 1}}'"
                ) from None
            if not isinstance(parsed, dict):
                raise ConfigError(f"environment variable {name}={raw!r}: expected a JSON object of {key} options")
            section_values[key] = parsed
    if section_values:
        values["sections"] = section_values
    return values


def _describe_argument(key: str, value: Any) -> str:
    return f"Accelerator({key}={value!r})"


def resolve_config(
    arguments: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    extra_backends: tuple[str, ...] = (),
    describe_argument: Callable[[str, Any], str] = _describe_argument,
) -> Config:
    """Resolve the configuration: ``arguments`` over ``PLAIT_*`` variables over the YAML file over defaults.

    :param arguments: values given in code (only keys the caller set explicitly).
    :param environ: the environment (``os.environ`` if ``None``).
    :param extra_backends: names of installed backends, accepted as sections.
    :param describe_argument: how an argument is named in messages (``plait launch`` names its flags).
    """
    from plait.config.yaml_files import load_config_file  # yaml is imported only when a file is read

    environ = os.environ if environ is None else environ
    sections = section_names(extra_backends)
    explicit_file = environ.get("PLAIT_CONFIG_FILE")
    path = Path(explicit_file) if explicit_file else default_config_path(environ)
    if explicit_file and not path.is_file():
        raise ConfigError(
            f"PLAIT_CONFIG_FILE={explicit_file!r} does not exist: point it at a YAML file "
            f"(`plait config` writes one) or unset it"
        )
    file_where: dict[str, str] = {}
    file_values = load_config_file(path, sections, file_where) if path.is_file() else {}
    env_where: dict[str, str] = {}
    env_values = read_environment(environ, sections, env_where)
    arguments = dict(arguments or {})

    merged: dict[str, Any] = {}
    merged_sections: dict[str, dict[str, Any]] = {}
    sources: dict[str, tuple[int, str]] = {}
    layers = (
        (file_values, FILE, file_where.get),
        (env_values, ENVIRONMENT, env_where.get),
        (arguments, ARGUMENT, lambda key: describe_argument(key, arguments[key])),
    )
    for layer, rank, describe in layers:
        for key, value in layer.items():
            if key == "sections":
                for name, section in value.items():
                    if "plugins" in section:  # named configs, each complete: they replace the section
                        merged_sections[name] = {}
                    merged_sections.setdefault(name, {}).update(section)
            else:
                merged[key] = value
                sources[key] = (rank, describe(key) or key)
    unknown = [k for k in merged if k not in KEYS]
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}{closest(unknown[0], KEYS)}")
    disabled = disabled_plugins(environ)
    autoload = coerce("autoload_plugins", environ.get("PLAIT_AUTOLOAD_PLUGINS", "1"), "PLAIT_AUTOLOAD_PLUGINS")
    return Config(
        **merged,
        sections=merged_sections,
        disable_plugins=disabled,
        autoload_plugins=autoload,
        config_file=str(path) if file_values or explicit_file else None,
        sources=sources,
    )
