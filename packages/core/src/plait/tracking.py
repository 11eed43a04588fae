"""Experiment trackers: the object API (HF Accelerate's ``GeneralTracker``) and safe fan-out of tracker hooks."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait._markers import hookimpl
from plait.errors import PluginError

if TYPE_CHECKING:
    import pluggy



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
                    stacklevel=4,
                )

