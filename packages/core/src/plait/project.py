"""Where a run writes: project and logging directories, and checkpoint naming (HF Accelerate's names)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass
class ProjectConfiguration:
    """Project layout and checkpoint rotation.

    With ``automatic_checkpoint_naming``, ``save_state()`` writes
    ``<project_dir>/checkpoints/checkpoint_<iteration>`` and keeps at most
    ``total_limit`` of them, never removing the newest complete one.
    """

    project_dir: str | None = None
    logging_dir: str | None = None
    automatic_checkpoint_naming: bool = False
    total_limit: int | None = None
    iteration: int = 0
    save_on_each_node: bool = False

    def __post_init__(self) -> None:
        if self.logging_dir is None:
            self.logging_dir = self.project_dir
        if self.total_limit is not None and (isinstance(self.total_limit, bool) or self.total_limit < 1):
            raise ValueError(f"total_limit={self.total_limit!r}: expected None or a whole number of at least 1")

    def set_directories(self, project_dir: str | os.PathLike[str] | None = None) -> None:
        """Set the project directory, and the logging directory when it was not set."""
        self.project_dir = None if project_dir is None else os.fspath(project_dir)
        if self.logging_dir is None:
            self.logging_dir = self.project_dir
