"""The settings of a run: :class:`Config`, its keys, and how each value is checked."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from plait.errors import ConfigError, closest
from plait.plugins.catalog import first_party
from plait.plugins.discovery import BACKENDS_GROUP

MIXED_PRECISION_CHOICES = ("no", "fp16", "bf16")
#: HF Accelerate's dynamo backends (``DynamoBackend``), upper case; ``NO`` leaves models uncompiled.
DYNAMO_BACKENDS = (
    "NO", "EAGER", "AOT_EAGER", "INDUCTOR", "AOT_TS_NVFUSER", "NVPRIMS_NVFUSER", "CUDAGRAPHS", "OFI", "FX2TRT",
    "ONNXRT", "TENSORRT", "AOT_TORCHXLA_TRACE_ONCE", "TORCHXLA_TRACE_ONCE", "TVM", "HPU_BACKEND", "NEURON",
)
#: Backend sections recognised even when their plugin is not installed: the first-party backends.
KNOWN_BACKENDS = first_party(BACKENDS_GROUP)
ENV_PREFIX = "PLAIT_"
_T = TypeVar("_T")

#: Where a value came from, lowest first: a higher source wins (see :meth:`Config.source_rank`).
DEFAULT, FILE, ENVIRONMENT, ARGUMENT = range(4)


#: Fields of :class:`Config` that are not keys of the YAML file.
_NOT_KEYS = ("sections", "config_file", "disable_plugins", "autoload_plugins", "sources")


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
    #: Batches move to the device with ``non_blocking=True`` (useful with ``pin_memory=True``).
    non_blocking: bool = False
    #: Accepted for HF Accelerate's ``use_seedable_sampler``: prepared dataloaders always shuffle with a seeded sampler.
    use_seedable_sampler: bool = False
    #: The seed of the prepared dataloaders' shuffling (``None``: drawn from torch's generator at prepare).
    data_seed: int | None = None
    #: ``torch.compile`` backend of prepared models (``"no"``: not compiled), HF Accelerate's dynamo names.
    dynamo_backend: str = "no"
    #: torch.distributed backend of the default process group (``None``: nccl on CUDA, gloo on CPU).
    process_group_backend: str | None = None
    #: Backend config sections, keyed by backend name (``{"fsdp": {...}}``).
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Plugin names blocked before loading (``PLAIT_DISABLE_PLUGINS=a,b``).
    disable_plugins: tuple[str, ...] = ()
    #: Whether ``plait.plugins`` entry points are loaded (``PLAIT_AUTOLOAD_PLUGINS=0`` turns it off).
    autoload_plugins: bool = True
    #: The YAML file the values came from, if any.
    config_file: str | None = None
    #: Where each key that was set came from: ``key -> (rank, description)``, the rank one of
    #: :data:`FILE`, :data:`ENVIRONMENT`, :data:`ARGUMENT`; keys at their default are absent.
    sources: Mapping[str, tuple[int, str]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("mixed_precision", "dynamo_backend", "gradient_accumulation_steps", "num_processes", "num_machines",
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

    def source_rank(self, key: str) -> int:
        """How strongly ``key`` was set: :data:`DEFAULT` (not set) < :data:`FILE` < :data:`ENVIRONMENT` <
        :data:`ARGUMENT`."""
        return self.sources.get(key, (DEFAULT, ""))[0]

    def source_of(self, key: str) -> str:
        """Where ``key``'s value came from, for messages (``"config file ..., line 3"``, ``"the default"``)."""
        return self.sources.get(key, (DEFAULT, "the default"))[1]

    def section(self, name: str) -> Mapping[str, Any]:
        """The config section of backend ``name`` (empty if absent)."""
        return self.sections.get(name, {})

    def options(self, name: str, given: Mapping[str, Any] | object | None = None) -> Mapping[str, Any] | object:
        """What backend ``name``'s options are built from: its section, updated with ``given`` (a dict), or
        ``given`` itself (the backend's own options object, given in code)."""
        if given is not None and not isinstance(given, Mapping):
            return given
        return {**self.section(name), **(given or {})}

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML-ready data: top-level keys and backend sections."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NOT_KEYS:
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
KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config) if f.name not in _NOT_KEYS)
_TYPES = {f.name: f.type for f in dataclasses.fields(Config)}


def _problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for ``key`` beyond its type, or ``None``."""
    if key == "mixed_precision" and value == "fp8":
        return (
            "mixed_precision='fp8' is not supported by plait (no FP8 recipes: Transformer Engine, MS-AMP or "
            "torchao): use mixed_precision='bf16', the closest it runs"
        )
    if key == "dynamo_backend" and str(value).upper() not in DYNAMO_BACKENDS:
        return (
            f"dynamo_backend={value!r} is not valid: expected 'no' or a torch.compile backend "
            f"({', '.join(b.lower() for b in DYNAMO_BACKENDS[1:])}){closest(str(value).upper(), DYNAMO_BACKENDS)}"
        )
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


def backend_section(backend: str, options: object, options_type: type[_T]) -> _T | Mapping[str, Any]:
    """What a backend's ``from_section`` starts from: ``options`` itself when it is already an
    ``options_type`` (given in code), else the section, which must be a mapping.

    :raises ConfigError: naming what was given and what is accepted.
    """
    if isinstance(options, (options_type, Mapping)):
        return options  # one of the two, as checked
    raise ConfigError(
        f"backend_options for {backend!r} is a {type(options).__qualname__}: expected a dict or "
        f"{options_type.__module__.split('.')[0]}.{options_type.__qualname__}"
    )

