"""HF Accelerate's memory utilities (``accelerate.utils.memory``): freeing device memory, and retrying a
function with a smaller batch size when it runs out of memory."""

from __future__ import annotations

import functools
import gc
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, overload

import torch

_R = TypeVar("_R")

#: Messages of the errors that a smaller batch may avoid (as Accelerate recognises them).
_OUT_OF_MEMORY_MESSAGES = (
    " out of memory.",  # CUDA, ROCm, XPU
    "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.",  # cuDNN refusing a too-large problem
    "DefaultCPUAllocator: can't allocate memory",  # CPU
    "FATAL ERROR :: MODULE:PT_DEVMEM Allocation failed",  # HPU
)


def clear_device_cache(garbage_collection: bool = False) -> None:
    """Release the memory the device's caching allocator holds but does not use (``torch.cuda.empty_cache``,
    or MPS's); with ``garbage_collection``, collect garbage first (slow: use it sparingly)."""
    from plait.utils.imports import is_cuda_available, is_mps_available

    if garbage_collection:
        gc.collect()
    if is_mps_available(min_version="2.0"):
        torch.mps.empty_cache()
    elif is_cuda_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def release_memory(*objects: Any) -> list[None]:
    """Drop this function's references to ``objects``, collect garbage and empty the device cache.

    Assign the result back, so that the caller's names stop holding them too::

        a, b = release_memory(a, b)
    """
    released: list[None] = [None for _ in objects]
    del objects
    clear_device_cache(garbage_collection=True)
    return released


def should_reduce_batch_size(exception: BaseException) -> bool:
    """Whether ``exception`` is an out-of-memory error (``torch.OutOfMemoryError``, or a ``RuntimeError``
    saying that CUDA, the CPU allocator or cuDNN ran out) that a smaller batch may avoid."""
    if isinstance(exception, torch.OutOfMemoryError):
        return True
    if isinstance(exception, RuntimeError) and len(exception.args) == 1 and isinstance(exception.args[0], str):
        return any(message in exception.args[0] for message in _OUT_OF_MEMORY_MESSAGES)
    return False


def _check_batch_size(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{what}={value!r} is not valid: expected a whole number of at least 0")
    return value


@overload
def find_executable_batch_size(
    function: None = None, starting_batch_size: int = 128, reduce_batch_size_fn: Callable[[], int] | None = None
) -> Callable[[Callable[..., _R]], Callable[..., _R]]: ...


@overload
def find_executable_batch_size(
    function: Callable[..., _R], starting_batch_size: int = 128, reduce_batch_size_fn: Callable[[], int] | None = None
) -> Callable[..., _R]: ...


def find_executable_batch_size(
    function: Callable[..., _R] | None = None,
    starting_batch_size: int = 128,
    reduce_batch_size_fn: Callable[[], int] | None = None,
) -> Callable[..., _R] | Callable[[Callable[..., _R]], Callable[..., _R]]:
    """Call ``function(batch_size, *args, **kwargs)``, and while it runs out of memory (see
    :func:`should_reduce_batch_size`), free memory and call it again with a smaller batch size.

    The batch size starts at ``starting_batch_size`` and is multiplied by 0.9 (rounded down) after each
    failure, as in HF Accelerate: 128, 115, 103, 92... ``reduce_batch_size_fn``, a function of no
    arguments returning the next (smaller) batch size, replaces that rule. When the batch size reaches
    0, a ``RuntimeError`` says so. The size that worked is kept for the next call.

    The decorated function is called without its first argument, which the decorator passes::

        @find_executable_batch_size(starting_batch_size=64)
        def train(batch_size, model, optimizer):
            ...

        train(model, optimizer)
    """
    if function is None:
        return functools.partial(  # type: ignore[return-value]
            find_executable_batch_size,
            starting_batch_size=starting_batch_size,
            reduce_batch_size_fn=reduce_batch_size_fn,
        )
    if not callable(function):
        raise TypeError(
            f"find_executable_batch_size({function!r}): expected the function to decorate; use it as "
            f"@find_executable_batch_size or @find_executable_batch_size(starting_batch_size=...)"
        )
    batch_size = _check_batch_size(starting_batch_size, "starting_batch_size")
    if batch_size == 0:
        raise ValueError("starting_batch_size=0 is not valid: expected the batch size to try first, at least 1")
    name = getattr(function, "__name__", repr(function))
    parameters = list(inspect.signature(function).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_varargs = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    if not positional and not takes_varargs:
        raise TypeError(
            f"{name} takes no positional argument: find_executable_batch_size passes the batch size as the "
            f"first argument, so add a batch_size parameter first"
        )
    first = positional[0].name if positional else None

    def reduce() -> int:
        if reduce_batch_size_fn is None:
            return int(batch_size * 0.9)
        smaller = _check_batch_size(reduce_batch_size_fn(), "the batch size returned by reduce_batch_size_fn")
        if smaller >= batch_size:
            raise ValueError(
                f"reduce_batch_size_fn returned {smaller} after batch size {batch_size} ran out of memory: "
                f"expected a smaller batch size, or 0 to stop"
            )
        return smaller

    @functools.wraps(function)
    def decorator(*args: Any, **kwargs: Any) -> _R:
        nonlocal batch_size
        by_name = first is not None and first in kwargs
        if by_name or (not takes_varargs and len(args) + 1 > len(positional)):
            given, others = (kwargs[first or ""], args) if by_name else (args[0], args[1:])
            names = [p.name for p in positional[1:]]
            rest = ", ".join([f"{n}={v!r}" for n, v in zip(names, others)]
                             + [f"{k}={v!r}" for k, v in kwargs.items() if k != first])
            raise TypeError(
                f"{name} was called with its batch size ({given!r}), which find_executable_batch_size passes "
                f"itself as the first argument: call {name}({rest})"
            )
        clear_device_cache(garbage_collection=True)
        while True:
            if batch_size == 0:
                raise RuntimeError("No executable batch size found, reached zero.")
            try:
                return function(batch_size, *args, **kwargs)
            except Exception as exc:
                if not should_reduce_batch_size(exc):
                    raise
                # The traceback holds the failed call's frames and their tensors: drop it before freeing.
                exc.__traceback__ = None
                del exc
                clear_device_cache(garbage_collection=True)
                batch_size = reduce()

    return decorator
