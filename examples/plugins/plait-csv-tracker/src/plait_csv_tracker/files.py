"""The run's two files: ``metrics.csv`` (one row per ``log``, a column per key) and ``hparams.json``.

Rows are flushed as they are written, so that a run that dies keeps what it logged. A key that appears after the
first rows adds a column: the file is rewritten once with the wider header (earlier rows get empty cells), through
a temporary file renamed over it, so that the file on disk is always a complete CSV.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from plait_csv_tracker.values import Cell

STEP = "step"


class MetricsFile:
    """``metrics.csv`` of one run: the ``step`` column first, then the keys in the order they were first logged."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.columns: list[str] = [STEP]
        self._file: TextIO = path.open("w", encoding="utf-8", newline="")
        self._next_step = 0
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()

    def append(self, step: int | None, row: Mapping[str, Cell]) -> None:
        """One row at ``step`` (``None``: one past the last row's step)."""
        step = self._next_step if step is None else int(step)
        self._next_step = step + 1
        new = [key for key in row if key not in self.columns]
        if new:
            self._widen(new)
        self._writer.writerow({STEP: step, **{k: repr(v) if isinstance(v, float) else v for k, v in row.items()}})
        self._file.flush()

    def _widen(self, new: list[str]) -> None:
        self._file.close()
        with self.path.open(encoding="utf-8", newline="") as old:
            rows = list(csv.DictReader(old))
        self.columns += new
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        with temporary.open("w", encoding="utf-8", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, self.path)
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)

    def close(self) -> None:
        self._file.close()


def write_hparams(path: Path, values: Mapping[str, Any]) -> None:
    """The run's hyper-parameters as JSON; values JSON cannot hold are written as their ``str``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(values), indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
