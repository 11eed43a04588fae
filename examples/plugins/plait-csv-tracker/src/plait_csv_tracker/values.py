"""What a logged value becomes in a CSV cell: numbers (Python, numpy, 0-d tensors) and strings as they are,
dicts flattened to ``key/inner`` columns; anything else (images, histograms, tensors with several elements) is
skipped and named, so that the tracker can warn once per kind."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Cell = int | float | str


def cell(value: Any) -> Cell | None:
    """``value`` as a CSV cell, or ``None`` when a cell cannot hold it."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, str)):
        return value
    item = getattr(value, "item", None)  # torch and numpy scalars, without importing either
    if callable(item) and getattr(value, "ndim", None) == 0:
        scalar = item()
        return scalar if isinstance(scalar, (int, float)) else None
    return None


def flatten(values: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Cell], list[tuple[str, str]]]:
    """The cells of one ``log`` call, and the ``(key, kind)`` of each value skipped."""
    row: dict[str, Cell] = {}
    skipped: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            inner, more = flatten(value, f"{name}/")
            row.update(inner)
            skipped += more
            continue
        converted = cell(value)
        if converted is None:
            skipped.append((name, type(value).__qualname__))
        else:
            row[name] = converted
    return row, skipped
