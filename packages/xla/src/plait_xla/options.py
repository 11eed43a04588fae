"""The ``xla:`` config section, validated once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plait.config import backend_section
from plait.errors import ConfigError, closest

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class XlaOptions:
    """Options of the ``xla`` backend."""

    #: One process drives every device of the host through torch_xla's SPMD: a mesh over the devices,
    #: each batch split along its ``data`` axis, parameters replicated (``--xla-spmd``). Off: one process
    #: per device (torchrun, or ``plait launch --num-processes N``).
    spmd: bool = False
    #: With ``spmd``: shard parameters over the mesh too (torch_xla's FSDPv2, ``SpmdFullyShardedDataParallel``).
    fsdp: bool = False

    def __post_init__(self) -> None:
        for name in ("spmd", "fsdp"):
            object.__setattr__(self, name, _bool(name, getattr(self, name)))
        if self.fsdp and not self.spmd:
            raise ConfigError(
                "xla option fsdp=true shards parameters over an SPMD mesh, but spmd is false: set spmd to true "
                "as well (--xla-spmd), or remove fsdp"
            )

    @classmethod
    def from_section(cls, options: Mapping[str, Any] | object) -> XlaOptions:
        """Build from a config section (a mapping) or return an ``XlaOptions`` given in code."""
        section = backend_section("xla", options, cls)
        if isinstance(section, XlaOptions):
            return section
        names = [f.name for f in dataclasses.fields(cls)]
        for key in section:
            if key not in names:
                raise ConfigError(f"unknown xla option {key!r}{closest(str(key), names)}; valid options: {', '.join(names)}")
        return cls(**dict(section))


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"xla option {name}={value!r} is not valid: expected true or false")
