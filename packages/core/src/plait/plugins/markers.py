"""The pluggy markers of the ``plait`` project (no heavy imports: listing plugins imports this)."""

from __future__ import annotations

import pluggy

PROJECT_NAME = "plait"

#: Marks a function or method as an implementation of a plait hook.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
#: Marks a function as a plait hook specification (used only in :mod:`plait.hookspecs`).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
