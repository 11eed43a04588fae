"""The ``ddp:`` config section, validated once."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plait.config import backend_section
from plait.errors import ConfigError, closest

COMM_HOOKS = ("no", "fp16", "bf16", "power_sgd", "batched_power_sgd")
#: Hooks that wrap another (HF Accelerate's ``comm_wrapper``): the wrapped hook's result is compressed.
COMM_WRAPPERS = ("no", "fp16", "bf16")


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
    #: Compress what ``comm_hook`` communicates to fp16 or bf16 (HF Accelerate's ``comm_wrapper``).
    comm_wrapper: str = "no"
    #: Arguments of PowerSGD's state (``matrix_approximation_rank``, ``start_powerSGD_iter``...).
    comm_state_option: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: DistributedDataParallel's ``dim`` (the batch dimension) and ``check_reduction``.
    dim: int = 0
    check_reduction: bool = False

    def __post_init__(self) -> None:
        for name in ("find_unused_parameters", "gradient_as_bucket_view", "static_graph", "broadcast_buffers",
                     "check_reduction"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"ddp option {name}={getattr(self, name)!r} is not valid: expected true or false")
        cap = self.bucket_cap_mb
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0):
            raise ConfigError(f"ddp option bucket_cap_mb={cap!r} is not valid: expected a positive number of MB")
        if self.comm_wrapper not in COMM_WRAPPERS:
            raise ConfigError(
                f"ddp option comm_wrapper={self.comm_wrapper!r} is not valid: expected one of "
                f"{', '.join(map(repr, COMM_WRAPPERS))}{closest(str(self.comm_wrapper), COMM_WRAPPERS)}"
            )
        if self.comm_wrapper != "no" and self.comm_hook not in ("power_sgd", "batched_power_sgd"):
            raise ConfigError(
                f"ddp option comm_wrapper={self.comm_wrapper!r} wraps a PowerSGD hook, but comm_hook={self.comm_hook!r}: "
                f"set comm_hook to 'power_sgd' or 'batched_power_sgd', or use comm_hook={self.comm_wrapper!r} alone"
            )
        if not isinstance(self.comm_state_option, Mapping):
            raise ConfigError(f"ddp option comm_state_option={self.comm_state_option!r} is not valid: expected a mapping")
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
        if self.dim != 0:
            kwargs["dim"] = self.dim
        if self.check_reduction:
            kwargs["check_reduction"] = True
        if not self.broadcast_buffers:
            kwargs["broadcast_buffers"] = False
        if self.bucket_cap_mb is not None:
            kwargs["bucket_cap_mb"] = self.bucket_cap_mb
        return kwargs
