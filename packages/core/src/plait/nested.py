"""Walking nested lists, tuples, dicts and tensors: device moves, dtype casts, padding, slicing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch


def rebuild_mapping(original: Mapping[Any, Any], items: dict[Any, Any]) -> Any:
    """A mapping of ``original``'s type holding ``items`` (dict, OrderedDict, BatchEncoding-like)."""
    cls: Any = type(original)
    return cls(items)


def is_tensor_structure(data: Any) -> bool:
    """Whether ``data`` is a tensor or a (nested) list/tuple/dict whose leaves are all tensors."""
    if isinstance(data, torch.Tensor):
        return True
    if isinstance(data, (list, tuple)):
        return all(is_tensor_structure(d) for d in data)
    if isinstance(data, Mapping):
        return all(is_tensor_structure(d) for d in data.values())
    return False


def apply(func: Callable[..., Any], data: Any, *args: Any, strict: bool = False, **kwargs: Any) -> Any:
    """Apply ``func`` to every tensor in ``data``, keeping the container types.

    Non-tensor leaves are returned as they are, or raise ``TypeError`` when ``strict``.
    """
    if isinstance(data, torch.Tensor):
        return func(data, *args, **kwargs)
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(apply(func, d, *args, strict=strict, **kwargs) for d in data))
    if isinstance(data, (list, tuple)):
        return type(data)(apply(func, d, *args, strict=strict, **kwargs) for d in data)
    if isinstance(data, Mapping):
        return rebuild_mapping(data, {k: apply(func, v, *args, strict=strict, **kwargs) for k, v in data.items()})
    if not strict and hasattr(data, "to") and callable(data.to) and not isinstance(data, type):
        # BatchEncoding-like objects that move themselves (never handed to a collective: see strict).
        return func(data, *args, **kwargs)
    if strict:
        raise TypeError(
            f"unsupported type {type(data).__name__} in the data passed: expected tensors, "
            f"or lists, tuples and dicts of tensors"
        )
    return data


def send_to_device(data: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in ``data`` to ``device`` (tensors already there are returned as they are).

    This runs on every batch: lists and tuples of tensors take a short path.
    """
    if isinstance(data, torch.Tensor):
        return data if data.device == device else data.to(device, non_blocking=non_blocking)
    cls = type(data)
    if cls is list or cls is tuple:
        return cls(
            [
                d if isinstance(d, torch.Tensor) and d.device == device else send_to_device(d, device, non_blocking)
                for d in data
            ]
        )
    if isinstance(data, (list, tuple)):
        if hasattr(data, "_fields"):  # namedtuple
            return cls(*(send_to_device(d, device, non_blocking) for d in data))
        return cls(send_to_device(d, device, non_blocking) for d in data)
    if isinstance(data, Mapping):
        return rebuild_mapping(data, {k: send_to_device(v, device, non_blocking) for k, v in data.items()})
    to = getattr(data, "to", None)
    if to is not None and callable(to) and not isinstance(data, type):
        try:
            return to(device, non_blocking=non_blocking)
        except TypeError:
            return to(device)
    return data


def convert_to_fp32(data: Any) -> Any:
    """Cast every fp16/bf16 tensor in ``data`` to fp32 (outputs of an autocast forward)."""

    def _cast(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.dtype in (torch.float16, torch.bfloat16):
            return t.float()
        return t

    return apply(_cast, data)


def slice_tensors(data: Any, index: slice) -> Any:
    """Slice every tensor (and every list) in ``data`` along its first dimension."""
    return apply(lambda t: t[index], data)
