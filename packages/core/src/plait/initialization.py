"""Building a model for a run (``accelerator.init_module()``): on the device at once, optionally uninitialised."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode


class SkipInitialisation(TorchFunctionMode):
    """Inside it, the functions of ``torch.nn.init`` return their tensor untouched: parameters keep whatever
    memory they were given (for weights that a checkpoint overwrites right after)."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Sequence[type], args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = dict(kwargs or {})
        if getattr(func, "__module__", None) == "torch.nn.init":
            return kwargs["tensor"] if "tensor" in kwargs else args[0]
        return func(*args, **kwargs)


@contextlib.contextmanager
def init_module(device: torch.device | None, empty_init: bool) -> Iterator[None]:
    """Build modules with their parameters on ``device`` (where they are made, when not ``None``), and
    with ``empty_init`` without running their initialisation."""
    with contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(device)
        if empty_init:
            stack.enter_context(SkipInitialisation())
        yield
