"""The pluggy markers of the ``plait`` project (no heavy imports: listing plugins imports this)."""

from __future__ import annotations

import pluggy

PROJECT_NAME = "plait"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
"""Marks a function or method as an implementation of a plait hook: ``@plait.hookimpl`` above a function
named after a hook of ``plait.hookspecs`` (``tryfirst``, ``trylast``, ``wrapper`` and ``optionalhook``
are pluggy's options)."""
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
"""Marks a function as a plait hook specification (used only in ``plait.hookspecs``)."""
