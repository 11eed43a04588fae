"""DDP communication hooks: gradients all-reduced compressed to fp16 or bf16 (``comm_hook``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def comm_hook_function(comm_hook: str, device_type: str = "cuda") -> Callable[..., Any] | None:
    """The DDP communication hook compressing gradients for ``comm_hook`` (``"fp16"``, ``"bf16"``), or ``None``."""
    if comm_hook == "no":
        return None
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if comm_hook == "fp16":
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
