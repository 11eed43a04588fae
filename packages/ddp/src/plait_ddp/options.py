"""The ``ddp:`` config section, validated once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plait.config import backend_section
from plait.errors import ConfigError, closest

COMM_HOOKS = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class DDPOptions:
    """Options of the ``ddp`` backend, with DistributedDataParallel's defaults."""

    find_unused_parameters: bool = False
    bucket_cap_mb: float | None = None
    gradient_as_bucket_view: bool = False
    static_graph: bool = False
    broadcast_buffers: bool = True
    #: Compress gradients to fp16 or bf16 for the all-reduce (``"no"`` keeps fp32).
    comm_hook: str = "no"

    def __post_init__(self) -> None:
        for name in ("find_unused_parameters", "gradient_as_bucket_view", "static_graph", "broadcast_buffers"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ddp option {name}={getattr(self, name)!r} is not valid: expected true or false")
        cap = self.bucket_cap_mb
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
            raise ConfigError(f"ddp option bucket_cap_mb={cap!r} is not valid: expected a positive number of MB")
        if self.comm_hook not in COMM_HOOKS:
            raise ConfigError(
                f"ddp option comm_hook={self.comm_hook!r} is not valid: expected one of "
                f"{', '.join(map(repr, COMM_HOOKS))}{closest(str(self.comm_hook), COMM_HOOKS)}"
            )

    @classmethod
    def from_section(cls, options: Mapping[str, Any] | object) -> DDPOptions:
        """Build from a config section (a mapping) or return a ``DDPOptions`` given in code."""
        section = backend_section("ddp", options, cls)
        if isinstance(section, DDPOptions):
            return section
        names = [f.name for f in dataclasses.fields(cls)]
        for key in section:
            if key not in names:
                raise ConfigError(f"unknown ddp option {key!r}{closest(str(key), names)}; valid options: {', '.join(names)}")
        return cls(**dict(section))

    def ddp_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for DistributedDataParallel: only those set away from its defaults
        (torch 2.13 warns whenever ``broadcast_buffers`` is passed at all)."""
        kwargs: dict[str, Any] = {
            "find_unused_parameters": self.find_unused_parameters,
            "gradient_as_bucket_view": self.gradient_as_bucket_view,
            "static_graph": self.static_graph,
        }
        if not self.broadcast_buffers:
            kwargs["broadcast_buffers"] = False
        if self.bucket_cap_mb is not None:
            kwargs["bucket_cap_mb"] = self.bucket_cap_mb
        return kwargs
