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


class CollectiveTimeoutError(PlaitError, RuntimeError):
    """A collective, barrier or backward timed out waiting for other processes (torch.distributed's timeout),
    or lost its connection to one that did.

    The message names this process's operation, the processes that gave up elsewhere (and in what)
    and those that never arrived; torch's own error is the ``__cause__``.

    :param waiting: each other process that gave up too: rank to its operation.
    :param missing: the ranks that were in no collective (hung, busy, or dead).
    """

    def __init__(self, message: str, rank: int, operation: str, waiting: dict[int, str], missing: list[int]) -> None:
        super().__init__(message)
        self.rank, self.operation, self.waiting, self.missing = rank, operation, waiting, missing

    def __reduce__(self) -> tuple[type, tuple[str, int, str, dict[int, str], list[int]]]:
        return type(self), (str(self), self.rank, self.operation, self.waiting, self.missing)


class CollectiveMismatchError(PlaitError, RuntimeError):
    """With ``debug`` (``PLAIT_DEBUG=1``): the processes were about to run different operations (uneven
    batches, a collective some processes skip), which would hang; raised on every process."""


def closest(name: str, candidates: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest candidate, or ``""``."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


class MissingLibrary(ModuleNotFoundError):
    """A plugin's library is not installed (wandb for the ``wandb`` tracker).

    A plugin raises it when it is loaded (its class's constructor, for a plugin class):
    ``plait plugins`` then lists it as needing ``install``, the command line stays
    silent about it, and only a run that selects it gets the error.

    :param message: what is missing and what to do.
    :param library: the missing module's name.
    :param install: the command that installs it (``pip install plait[wandb]``).
    """

    def __init__(self, message: str, library: str, install: str) -> None:
        super().__init__(message, name=library)
        self.library = library
        self.install = install


class NotSupportedError(PlaitError, NotImplementedError):
    """A name of HF Accelerate's that plait does not implement (Megatron-LM, FP8 recipes, IPEX, NPU/XPU...).

    It can be imported, so that a script's imports work; using it raises this error,
    whose message says that plait does not support it and what is closest.
    """


def not_supported(name: str, closest_alternative: str) -> NotSupportedError:
    """The error for using Accelerate's ``name``: plait does not support it; ``closest_alternative`` says
    what to use instead."""
    return NotSupportedError(f"{name} is not supported by plait: {closest_alternative}")
