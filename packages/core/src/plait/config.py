"""The one resolved configuration, and the only module that reads ``PLAIT_*`` variables.

Highest first: ``Accelerator(...)`` arguments, ``PLAIT_*`` environment variables,
the YAML file (``PLAIT_CONFIG_FILE``, else :func:`default_config_path`), defaults.
Top-level keys are the fields of :class:`Config`; a backend's options live in a
section named after it (``fsdp:``), validated by that backend's plugin. HF
Accelerate's ``default_config.yaml`` is recognised and mapped (see
:mod:`plait.accelerate_config`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from plait.errors import ConfigError, closest

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
#: Backend sections recognised even when their plugin is not installed.
KNOWN_BACKENDS = ("single", "ddp", "fsdp", "zero", "xla")
ENV_PREFIX = "PLAIT_"
_T = TypeVar("_T")
#: Variables that are not config keys but are read here.
_SPECIAL_ENV = {"PLAIT_CONFIG_FILE", "PLAIT_DISABLE_PLUGINS", "PLAIT_AUTOLOAD_PLUGINS"}


@dataclass(frozen=True)
class Config:
    """Every setting of a run. Built by :func:`resolve_config`; checked once, when created."""

    backend: str | None = None
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    cpu: bool = False
    split_batches: bool = False
    even_batches: bool = True
    device_placement: bool = True
    step_scheduler_with_optimizer: bool = True
    log_with: tuple[str, ...] = ()
    project_dir: str | None = None
    num_processes: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int | None = None
    debug: bool = False
    #: Seconds a collective waits for the other processes before failing (torch.distributed's timeout).
    process_group_timeout: int = 1800
    #: Rank 0 reads every batch and sends each process its share (otherwise each process reads its own).
    dispatch_batches: bool = False
    #: Backend config sections, keyed by backend name (``{"fsdp": {...}}``).
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Plugin names blocked before loading (``PLAIT_DISABLE_PLUGINS=a,b``).
    disable_plugins: tuple[str, ...] = ()
    #: Whether ``plait.plugins`` entry points are loaded (``PLAIT_AUTOLOAD_PLUGINS=0`` turns it off).
    autoload_plugins: bool = True
    #: The YAML file the values came from, if any.
    config_file: str | None = None

    def __post_init__(self) -> None:
        for name in ("mixed_precision", "gradient_accumulation_steps", "num_processes", "num_machines",
                     "process_group_timeout"):
            problem = _problem(name, getattr(self, name))
            if problem is not None:
                raise ConfigError(problem)
        if isinstance(self.machine_rank, bool) or not isinstance(self.machine_rank, int):
            raise ConfigError(f"machine_rank={self.machine_rank!r} is not valid: expected a whole number")
        if not 0 <= self.machine_rank < self.num_machines:
            raise ConfigError(
                f"machine_rank={self.machine_rank} is not valid: expected 0..{self.num_machines - 1} "
                f"for num_machines={self.num_machines}"
            )

    def section(self, name: str) -> Mapping[str, Any]:
        """The config section of backend ``name`` (empty if absent)."""
        return self.sections.get(name, {})

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML-ready data: top-level keys and backend sections."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in ("sections", "config_file", "disable_plugins", "autoload_plugins"):
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        for name, section in self.sections.items():
            out[name] = dict(section)
        return out

    def to_environ(self) -> dict[str, str]:
        """The ``PLAIT_*`` variables that hand this config to worker processes (what ``plait launch`` sets).

        Reading them back (:func:`resolve_config`) gives this config again; the config file is
        named too (``PLAIT_CONFIG_FILE``), so that no other file is read in its place.
        """
        env: dict[str, str] = {}
        for key in KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = str(value)
            env[ENV_PREFIX + key.upper()] = text
        for name, section in self.sections.items():
            env[ENV_PREFIX + name.upper()] = json.dumps(dict(section))
        if self.config_file:
            env["PLAIT_CONFIG_FILE"] = self.config_file
        if self.disable_plugins:
            env["PLAIT_DISABLE_PLUGINS"] = ",".join(self.disable_plugins)
        return env


#: Top-level YAML keys: the user-facing fields of :class:`Config`.
KEYS: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(Config)
    if f.name not in ("sections", "disable_plugins", "autoload_plugins", "config_file")
)
_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where ``plait config`` writes and every run reads by default (under ``XDG_CONFIG_HOME``)."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "plait" / "default_config.yaml"


def disabled_plugins(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Plugin names blocked by ``PLAIT_DISABLE_PLUGINS=a,b``."""
    return tuple(p.strip() for p in environ.get("PLAIT_DISABLE_PLUGINS", "").split(",") if p.strip())


def _problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for ``key`` beyond its type, or ``None``."""
    if key == "mixed_precision" and value not in MIXED_PRECISION_CHOICES:
        return (
            f"mixed_precision={value!r} is not valid: expected one of "
            f"{', '.join(repr(c) for c in MIXED_PRECISION_CHOICES)}{closest(str(value), MIXED_PRECISION_CHOICES)}"
        )
    if key in ("gradient_accumulation_steps", "num_processes", "num_machines", "process_group_timeout") and (
        isinstance(value, bool) or not isinstance(value, int) or value < 1
    ):
        return f"{key}={value!r} is not valid: expected a whole number of at least 1"
    return None


def section_names(extra_backends: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Names accepted as backend sections: the known backends plus installed ones."""
    return tuple(dict.fromkeys(KNOWN_BACKENDS + extra_backends))


def coerce(key: str, value: Any, origin: str) -> Any:
    """Check ``value`` for ``key``; strings (from the environment) are parsed. Errors start with ``origin``."""
    value = _coerce_type(key, value, origin)
    problem = _problem(key, value)
    if problem is not None:
        raise ConfigError(f"{origin}: {problem}")
    return value


def _coerce_type(key: str, value: Any, origin: str) -> Any:
    kind = _TYPES[key]
    if key == "mixed_precision" and value is False:
        return "no"  # YAML 1.1 reads an unquoted `mixed_precision: no` as false
    if value is None and "None" in kind:
        return None
    if kind.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{origin}: {key}={value!r} is not valid: expected true or false")
    if kind.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{origin}: {key}={value!r} is not valid: expected a whole number")
    if kind.startswith("tuple"):
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{origin}: {key}={value!r} is not valid: expected a list of names")
    if not isinstance(value, str):
        raise ConfigError(f"{origin}: {key}={value!r} is not valid: expected a string")
    return value


def read_environment(environ: Mapping[str, str], sections: tuple[str, ...]) -> dict[str, Any]:
    """Config values from ``PLAIT_<KEY>`` variables; ``PLAIT_<SECTION>`` holds a JSON object."""
    values: dict[str, Any] = {}
    section_values: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _SPECIAL_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in KEYS:
            values[key] = coerce(key, raw, f"environment variable {name}")
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


def resolve_config(
    arguments: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    extra_backends: tuple[str, ...] = (),
) -> Config:
    """Resolve the configuration: ``arguments`` over ``PLAIT_*`` variables over the YAML file over defaults.

    :param arguments: values given in code (only keys the caller set explicitly).
    :param environ: the environment (``os.environ`` if ``None``).
    :param extra_backends: names of installed backends, accepted as sections.
    """
    from plait.config_file import load_config_file  # yaml is imported only when a file is read

    environ = os.environ if environ is None else environ
    sections = section_names(extra_backends)
    explicit_file = environ.get("PLAIT_CONFIG_FILE")
    path = Path(explicit_file) if explicit_file else default_config_path(environ)
    if explicit_file and not path.is_file():
        raise ConfigError(
            f"PLAIT_CONFIG_FILE={explicit_file!r} does not exist: point it at a YAML file "
            f"(`plait config` writes one) or unset it"
        )
    file_values = load_config_file(path, sections) if path.is_file() else {}
    env_values = read_environment(environ, sections)

    merged: dict[str, Any] = {}
    merged_sections: dict[str, dict[str, Any]] = {}
    for layer in (file_values, env_values, dict(arguments or {})):
        for key, value in layer.items():
            if key == "sections":
                for name, section in value.items():
                    merged_sections.setdefault(name, {}).update(section)
            else:
                merged[key] = value
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
    )


def backend_section(backend: str, options: object, options_type: type[_T]) -> _T | Mapping[str, Any]:
    """What a backend's ``from_section`` starts from: ``options`` itself when it is already an
    ``options_type`` (given in code), else the section, which must be a mapping.

    :raises ConfigError: naming what was given and what is accepted.
    """
    if isinstance(options, (options_type, Mapping)):
        return options  # type: ignore[return-value]  # one of the two, as checked
    raise ConfigError(
        f"backend_options for {backend!r} is a {type(options).__qualname__}: expected a dict or "
        f"{options_type.__module__.split('.')[0]}.{options_type.__qualname__}"
    )

