"""Each process's contiguous share of a list, tuple, dict of lists or tensor (``split_between_processes``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from plait.nested import rebuild_mapping


def split_for_process(inputs: Any, index: int, count: int, apply_padding: bool = False) -> Any:
    """Process ``index`` of ``count``'s contiguous share of ``inputs`` (earlier processes get the extras)."""
    if count == 1:
        return inputs
    if isinstance(inputs, Mapping):
        lengths = {k: len(v) for k, v in inputs.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"split_between_processes needs values of one length, got lengths {lengths}")
        return rebuild_mapping(inputs, {k: split_for_process(v, index, count, apply_padding) for k, v in inputs.items()})
    length = len(inputs)
    per_process, extras = divmod(length, count)
    start = index * per_process + min(index, extras)
    end = start + per_process + (1 if index < extras else 0)
    share = inputs[start:end]
    if apply_padding:
        target = math.ceil(length / count)
        missing = target - (end - start)
        if missing > 0:
            import torch

            last = inputs[-1:]  # HF Accelerate pads with the input's last element, not the share's
            share = torch.cat([share] + [last] * missing) if isinstance(share, torch.Tensor) else share + last * missing
    return share
