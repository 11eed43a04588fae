"""Exceptions raised by plait. Each message names the value, what was expected and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PlaitError(Exception):
    """Base class of plait's own errors."""


class ConfigError(PlaitError, ValueError):
    """A configuration value, key or file is invalid."""


class PluginError(PlaitError, RuntimeError):
    """A plugin is missing, failed to load, or broke the hook contract."""


class CheckpointError(PlaitError, RuntimeError):
    """A checkpoint is missing, incomplete, corrupted, or would be overwritten."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""
