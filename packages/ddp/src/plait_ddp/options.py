"""The ``ddp:`` config section, validated once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
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

    def comm_hook_function(self, device_type: str = "cuda") -> Callable[..., Any] | None:
        """The DDP communication hook compressing gradients, or ``None``."""
        if self.comm_hook == "no":
            return None
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        if self.comm_hook == "fp16":
            return default_hooks.fp16_compress_hook
        # DDP refuses torch's bf16 hook by name unless CUDA and NCCL >= 2.10; gloo all-reduces bfloat16 fine.
        return default_hooks.bf16_compress_hook if device_type == "cuda" else bf16_compress_any_backend


def bf16_compress_any_backend(process_group, bucket):  # type: ignore[no-untyped-def]
    """Average gradients in bfloat16 over any process-group backend.

    Deliberately unannotated: DDP compares a hook's annotations with the real
    classes, and this module's annotations are strings.
    """
    import torch
    import torch.distributed as dist

    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(dist.get_world_size(group))
    future = dist.all_reduce(compressed, group=group, async_op=True).get_future()

    def decompress(fut):  # type: ignore[no-untyped-def]
        buffer.copy_(fut.value()[0])
        return buffer

    return future.then(decompress)
