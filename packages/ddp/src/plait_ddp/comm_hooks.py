"""DDP communication hooks: gradients all-reduced compressed to fp16 or bf16, or PowerSGD (``comm_hook``),
optionally wrapped to compress PowerSGD's traffic (``comm_wrapper``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def register(model: Any, comm_hook: str, comm_wrapper: str, state_option: Mapping[str, Any], device_type: str) -> None:
    """Register ``comm_hook`` (wrapped by ``comm_wrapper``) on the DistributedDataParallel ``model``."""
    if comm_hook == "no":
        return
    if comm_hook in ("power_sgd", "batched_power_sgd"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        hook: Callable[..., Any] = (
            powerSGD_hook.powerSGD_hook if comm_hook == "power_sgd" else powerSGD_hook.batched_powerSGD_hook
        )
        if comm_wrapper == "fp16":
            hook = default_hooks.fp16_compress_wrapper(hook)
        elif comm_wrapper == "bf16":
            hook = default_hooks.bf16_compress_wrapper(hook)
        model.register_comm_hook(state=powerSGD_hook.PowerSGDState(None, **dict(state_option)), hook=hook)
        return
    function = comm_hook_function(comm_hook, device_type)
    if function is not None:
        model.register_comm_hook(state=None, hook=function)


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
