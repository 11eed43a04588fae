"""The ``plait`` command: ``launch``, ``config``, ``env``, ``plugins``, ``test``, and the commands plugins add.

Start-up stays fast: nothing here imports torch at module level, and plugins
keep their heavy imports inside hook bodies, so ``plait --help`` and
``plait plugins`` cost milliseconds. torch is imported by the commands that need it.
"""

from __future__ import annotations

__all__ = ["build_cli", "main"]


def __getattr__(name: str) -> object:
    if name in __all__:
        from plait_cli import main as _main

        return getattr(_main, name)
    raise AttributeError(f"module 'plait_cli' has no attribute {name!r}")
