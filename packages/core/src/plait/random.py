"""Seeding and capturing every random number generator (python, numpy, torch, cuda, mps, and XLA's where
torch_xla is loaded)."""

from __future__ import annotations

import random as _random
import sys
from typing import Any

import numpy as np
import torch

RNG_TYPES = ("torch", "cuda", "mps", "xla", "generator")


def check_rng_types(rng_types: Any) -> list[str]:
    """``Accelerator(rng_types=...)`` checked: names of :data:`RNG_TYPES` (``["generator"]`` when ``None``)."""
    types = ["generator"] if rng_types is None else [str(getattr(t, "value", t)) for t in rng_types]
    for t in types:
        if t not in RNG_TYPES:
            raise ValueError(f"rng_types contains {t!r}: expected some of {', '.join(RNG_TYPES)}")
    return types


def _xla_model() -> Any:
    """``torch_xla.core.xla_model`` when torch_xla is loaded (by the xla backend), else ``None``: its generator
    (dropout on an XLA device) is seeded, saved and restored with the others, and torch_xla is never imported
    here for it."""
    if "torch_xla" not in sys.modules:
        return None
    import torch_xla.core.xla_model as xm

    return xm


def set_seed(seed: int, device_specific: bool = False, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (every device) with ``seed``.

    :param device_specific: add the process index, so every process draws differently.
    :param deterministic: also ask torch for deterministic algorithms.
    """
    if device_specific:
        import os

        seed += int(os.environ.get("RANK", "0"))
    _random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds cuda and mps as well
    xm = _xla_model()
    if xm is not None:
        xm.set_rng_state(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)


def get_rng_states() -> dict[str, Any]:
    """Every generator's state, as data ``torch.load(weights_only=True)`` accepts (tensors, ints, tuples)."""
    version, internal, gauss = _random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        states["mps"] = torch.mps.get_rng_state()
    xm = _xla_model()
    if xm is not None:
        states["xla"] = int(xm.get_rng_state())
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`get_rng_states`'s states."""
    python = states["python"]
    _random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy_state = states["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])
    xm = _xla_model()
    if "xla" in states and xm is not None:
        xm.set_rng_state(int(states["xla"]))
