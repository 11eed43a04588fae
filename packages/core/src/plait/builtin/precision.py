"""Precision default: torch.amp autocast (fp16 with a GradScaler, or bf16), else full precision."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._markers import hookimpl

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.precision import Precision


@hookimpl(trylast=True)
def plait_precision(accelerator: Accelerator) -> Precision:
    import torch

    from plait.precision import Precision, TorchAmpPrecision

    if accelerator.mixed_precision == "fp16":
        return TorchAmpPrecision(accelerator.device, torch.float16)
    if accelerator.mixed_precision == "bf16":
        return TorchAmpPrecision(accelerator.device, torch.bfloat16)
    return Precision(accelerator.device)
