"""The save and load pre-hooks of ``save_state``/``load_state`` (HF Accelerate's), and their handles."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_ids = itertools.count()


class RemovableHandle:
    """What registering a hook returns: ``remove()`` unregisters it (also as a context manager)."""

    def __init__(self, hooks: dict[int, Any], hook_id: int) -> None:
        self.hooks = hooks
        self.id = hook_id

    def remove(self) -> None:
        self.hooks.pop(self.id, None)

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def register(hooks: dict[int, Callable[..., None]], hook: Callable[..., None]) -> RemovableHandle:
    """Add ``hook`` to ``hooks``; return its handle."""
    if not callable(hook):
        raise TypeError(f"the hook {hook!r} is not callable: pass a function")
    handle = RemovableHandle(hooks, next(_ids))
    hooks[handle.id] = hook
    return handle


def unlisted(directory: Path, listed: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The manifest entries of the files in the checkpoint ``directory`` that are not in ``listed``: those
    a save hook wrote by itself."""
    from plait.checkpoint.writer import ALGORITHM, checksum_file

    entries = {}
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = file.relative_to(directory).as_posix()
        if name not in listed:
            entries[name] = {"algorithm": ALGORITHM, "digest": checksum_file(file), "size": file.stat().st_size}
    return entries
