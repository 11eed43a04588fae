"""Tracker ``toylog``: one JSON object per event in ``<logging_dir>/toylog.jsonl``.

The entry point is a class: plait makes one instance per Accelerator.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plait import hookimpl

NAME = "toylog"


class ToyLog:
    def __init__(self) -> None:
        self.path: Path | None = None

    def _write(self, **event: Any) -> None:
        assert self.path is not None, "toylog: log before start"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(event) + "\n")

    @hookimpl
    def plait_tracker_start(
        self, accelerator: Any, project_name: str, config: Mapping[str, Any] | None, init_kwargs: Mapping[str, Any]
    ) -> None:
        if accelerator.logging_dir is None:
            raise ValueError("toylog writes under logging_dir: pass Accelerator(project_dir=...)")
        self.path = Path(accelerator.logging_dir) / "toylog.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = dict(init_kwargs.get(NAME, {}))
        self._write(event="start", project=project_name, config=dict(config or {}), options=options)

    @hookimpl
    def plait_tracker_log(self, values: Mapping[str, Any], step: int | None) -> None:
        self._write(event="log", step=step, values={k: float(v) for k, v in values.items()})

    @hookimpl
    def plait_tracker_finish(self) -> None:
        self._write(event="finish")

    @hookimpl
    def plait_tracker_get(self, name: str, unwrap: bool) -> Any:
        if name != NAME:
            return None
        return self.path if unwrap else self
