"""Writing a file so that readers never see half of it. No torch import: the command line uses it too."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(temporary_path)``, then rename the result onto ``path``: readers never see half a file."""
    import uuid

    temporary = path.with_name(f".{path.name}.plait-tmp-{uuid.uuid4().hex[:8]}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
