"""Experiment trackers: the object API (HF Accelerate's ``GeneralTracker``), the kinds of logged
values that are not plain scalars (:class:`Image`, :class:`Histogram`), and safe fan-out of tracker hooks."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from plait.errors import PluginError
from plait.plugins.markers import hookimpl

if TYPE_CHECKING:
    import pluggy


@dataclass(frozen=True)
class Image:
    """An image to log: ``accelerator.log({"sample": Image(tensor)}, step=step)``.

    PIL images may also be logged as they are. Trackers that cannot store images
    skip them with a warning.

    :param data: a PIL image, or an array or tensor of shape ``(H, W)``, ``(C, H, W)``
        or ``(H, W, C)`` with 1, 3 or 4 channels; floats in ``[0, 1]`` or integers in
        ``[0, 255]``.
    :param channels: where the channel axis of a 3-d ``data`` is: ``"first"``
        (``(C, H, W)``) or ``"last"`` (``(H, W, C)``); ``None`` means first for a torch
        tensor and last for anything else (numpy's and PIL's convention).
    :param caption: a caption, for trackers that show one.
    """

    data: Any
    channels: Literal["first", "last"] | None = None
    caption: str | None = None


@dataclass(frozen=True)
class Histogram:
    """The distribution of many values to log as a histogram: ``accelerator.log({"weights": Histogram(w)})``.

    A tensor or array of more than one element logged as it is counts as a histogram too.

    :param values: a tensor, an array or a sequence of numbers (flattened).
    """

    values: Any


class GeneralTracker:
    """Base class of a tracker passed as an object in ``log_with`` (HF Accelerate's API).

    Subclasses set ``name`` and ``requires_logging_directory``, and implement
    :meth:`store_init_configuration`, :meth:`log` and optionally :meth:`finish`
    and :attr:`tracker` (the native object ``get_tracker(name, unwrap=True)`` returns).
    """

    name: str = "tracker"
    requires_logging_directory: bool = False
    main_process_only: bool = True

    def start(self) -> None:
        """Called by ``init_trackers`` before :meth:`store_init_configuration`."""

    @property
    def tracker(self) -> Any:
        return self

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        """Store the run's hyper-parameters."""

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """Log ``values`` at ``step``."""
        raise NotImplementedError(f"{type(self).__name__}.log is not implemented")

    def finish(self) -> None:
        """Flush and close the run."""


class TrackerObjectPlugin:
    """Exposes a :class:`GeneralTracker` object through the tracker hooks."""

    def __init__(self, tracker: GeneralTracker) -> None:
        self.tracker = tracker

    @hookimpl
    def plait_tracker_start(self, project_name: str, config: Mapping[str, Any] | None) -> None:
        self.tracker.start()
        if config is not None:
            self.tracker.store_init_configuration(config)

    @hookimpl
    def plait_tracker_log(self, values: Mapping[str, Any], step: int | None, log_kwargs: Mapping[str, Any]) -> None:
        self.tracker.log(values, step=step, **log_kwargs.get(self.tracker.name, {}))

    @hookimpl
    def plait_tracker_finish(self) -> None:
        self.tracker.finish()

    @hookimpl
    def plait_tracker_get(self, name: str, unwrap: bool) -> Any:
        if name != self.tracker.name:
            return None
        return self.tracker.tracker if unwrap else self.tracker


def call_each(pm: pluggy.PluginManager, hook_name: str, strict: bool, warned: set[str], **kwargs: Any) -> None:
    """Call every implementation of a tracker hook separately, so that one failing tracker stops no other.

    An exception is re-raised when ``strict``; otherwise it is warned about once per
    tracker and hook, and training continues.
    """
    caller = getattr(pm.hook, hook_name)
    for impl in reversed(caller.get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            raise PluginError(
                f"plugin {impl.plugin_name!r} wraps {hook_name}: tracker hooks are called one implementation "
                f"at a time and take no wrappers; implement the hook itself"
            )
        arguments = {name: kwargs[name] for name in impl.argnames}
        try:
            impl.function(**arguments)
        except Exception as exc:
            if strict:
                raise
            key = f"{impl.plugin_name}:{hook_name}"
            if key not in warned:
                warned.add(key)
                warnings.warn(
                    f"tracker {impl.plugin_name!r} failed in {hook_name} ({type(exc).__name__}: {exc}); "
                    f"training continues and later failures of this tracker are not reported "
                    f"(Accelerator(strict_trackers=True) raises instead)",
                    stacklevel=caller_stacklevel(),
                )


def caller_stacklevel(packages: tuple[str, ...] = ("plait",)) -> int:
    """The ``stacklevel`` for :func:`warnings.warn` that points at the first caller outside ``packages``.

    Call it from the function that warns: the user's line that led there is shown,
    however many plait (or plugin) frames are in between.
    """
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] in packages:
        frame = frame.f_back
        level += 1
    return level

