"""Precision and the optimizer step on XLA: bf16 through autocast on the XLA device (never
``XLA_USE_BF16``), the gradient all-reduce and ``torch_xla.sync()`` on synchronising steps only.
Imported from hook bodies only."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from plait.errors import ConfigError
from plait.nested import convert_to_fp32
from plait.precision import Precision

SUPPORTED = ("no", "bf16")


def check_mixed_precision(mixed_precision: str) -> None:
    """Refuse what XLA devices cannot run, saying what they can."""
    if mixed_precision not in SUPPORTED:
        raise ConfigError(
            f"mixed_precision={mixed_precision!r} is not supported by the xla backend: XLA devices (TPUs) compute "
            f"in bfloat16 without loss scaling, so use mixed_precision='bf16' (autocast on the XLA device) or 'no'"
        )


class XlaPrecision(Precision):
    """Full precision or bf16 autocast on the XLA device; the optimizer step all-reduces gradients first when
    each process holds its own (one process per device), then cuts the graph: the step's boundary.

    :param replicas: processes whose gradients are averaged before the step (1 under SPMD, where XLA's
        partitioner already reduces them inside the graph).
    """

    def __init__(self, device: torch.device, dtype: torch.dtype | None, replicas: int,
                 autocast_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__(device)
        self.dtype = dtype
        self.replicas = replicas
        self.autocast_kwargs = {"dtype": dtype, **(autocast_kwargs or {})}
        #: Optimizers whose gradients were all-reduced for this step already (clipping needs them reduced).
        self.reduced: set[int] = set()

    def autocast(self, **kwargs: Any) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("xla", **{**self.autocast_kwargs, **kwargs})

    def wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        if self.dtype is None:
            return forward
        precision = self

        @functools.wraps(forward)
        def forward_in_bf16(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast("xla", **precision.autocast_kwargs):
                outputs = forward(*args, **kwargs)
            return convert_to_fp32(outputs)

        forward_in_bf16.__wrapped__ = forward
        return forward_in_bf16

    def reduce_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Average ``optimizer``'s gradients over the processes, once per step."""
        if self.replicas > 1 and id(optimizer) not in self.reduced:
            import torch_xla.core.xla_model as xm

            xm.reduce_gradients(optimizer)
            self.reduced.add(id(optimizer))

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        import torch_xla

        self.reduce_gradients(optimizer)
        self.reduced.discard(id(optimizer))
        optimizer.step(closure) if closure is not None else optimizer.step()
        torch_xla.sync()
        return True


def clip_grad_norm(precision: XlaPrecision, optimizers: Iterable[Any], parameters: list[torch.Tensor],
                   max_norm: float, norm_type: float) -> torch.Tensor:
    """Clip by the norm of the averaged gradients: with one process per device they are reduced first
    (the step then does not reduce them again)."""
    for optimizer in optimizers:
        precision.reduce_gradients(getattr(optimizer, "optimizer", optimizer))
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm, norm_type=norm_type)
