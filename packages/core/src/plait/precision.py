"""Precision: autocast, backward, gradient scaling and the optimizer step, owned by one object.

The ``plait_precision`` hook returns one :class:`Precision` per accelerator; its
methods then run on every step without plugin dispatch.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch

from plait.nested import convert_to_fp32


class Precision:
    """Full precision: plain backward and step. Subclass it to own scaling or stepping."""

    #: The gradient scaler, when gradients are scaled (fp16), else ``None``.
    scaler: Any = None
    #: ``True`` for engines that divide the loss by the accumulation steps themselves
    #: (``Accelerator.backward`` then passes the loss through undivided).
    handles_accumulation: bool = False

    #: Whether :meth:`backward` / :meth:`optimizer_step` are this class's plain ones: the accelerator
    #: and the prepared optimizer then call ``loss.backward()`` / ``optimizer.step()`` themselves, one
    #: Python call fewer on every step. Set for each subclass by ``__init_subclass__``.
    plain_backward: bool = True
    plain_step: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.plain_backward = cls.backward is Precision.backward
        cls.plain_step = cls.optimizer_step is Precision.optimizer_step

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def autocast(self, **kwargs: Any) -> contextlib.AbstractContextManager[Any]:
        """The context in which forward passes run in reduced precision."""
        return contextlib.nullcontext()

    def wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a model's ``forward`` to run under :meth:`autocast`; the identity at full precision."""
        return forward

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Compute gradients of ``loss`` (already divided by the accumulation steps)."""
        loss.backward(**kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        """Step ``optimizer``; return ``False`` when the step was skipped (inf/nan gradients)."""
        optimizer.step(closure) if closure is not None else optimizer.step()
        return True

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide ``optimizer``'s gradients by the loss scale, before clipping or inspecting them."""

    def state_dict(self) -> dict[str, Any] | None:
        """State to checkpoint (the scaler's), or ``None``."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s state."""


class TorchAmpPrecision(Precision):
    """``torch.autocast`` in fp16 or bf16; fp16 scales the loss with :class:`torch.amp.GradScaler`."""

    def __init__(
        self, device: torch.device, dtype: torch.dtype, scaler_kwargs: dict[str, Any] | None = None,
        autocast_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(device)
        self.dtype = dtype
        #: ``torch.autocast`` arguments of prepared models' forward (HF Accelerate's ``AutocastKwargs``).
        self.autocast_kwargs = {"dtype": dtype, **(autocast_kwargs or {})}
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, **(scaler_kwargs or {})) if dtype == torch.float16 else None
        self._unscaled: set[int] = set()

    def autocast(self, **kwargs: Any) -> contextlib.AbstractContextManager[Any]:
        options = {"dtype": self.dtype, **kwargs}
        return torch.autocast(self.device_type, **options)

    def wrap_forward(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        precision = self

        @functools.wraps(forward)
        def forward_in_mixed_precision(*args: Any, **kwargs: Any) -> Any:
            with torch.autocast(precision.device_type, **precision.autocast_kwargs):
                outputs = forward(*args, **kwargs)
            return convert_to_fp32(outputs)

        forward_in_mixed_precision.__wrapped__ = forward
        return forward_in_mixed_precision

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward(**kwargs)
        else:
            loss.backward(**kwargs)

    def optimizer_step(self, optimizer: torch.optim.Optimizer, closure: Callable[[], Any] | None = None) -> bool:
        if self.scaler is None:
            return super().optimizer_step(optimizer, closure)
        # A skipped step is the only thing that lowers the scale: update() backs off when it saw inf/nan.
        scale_before = self.scaler.get_scale()
        self.scaler.step(optimizer, closure) if closure is not None else self.scaler.step(optimizer)
        self.scaler.update()
        self._unscaled.discard(id(optimizer))
        return not self.scaler.get_scale() < scale_before

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None and id(optimizer) not in self._unscaled:
            self.scaler.unscale_(optimizer)
            self._unscaled.add(id(optimizer))

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state)
