"""The Accelerator's trackers: HF Accelerate's ``init_trackers``, ``log``, ``get_tracker``, on the main process
only, through the ``plait_tracker_*`` hooks (fanned out one tracker at a time by :func:`call_each`)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait.errors import PluginError
from plait.plugins import catalog, discovery, manager
from plait.tracking import GeneralTracker, TrackerObjectPlugin, call_each

if TYPE_CHECKING:
    from plait.accelerator import Accelerator


class Trackers:
    """Experiment tracking on the main process; the other processes do no tracker work at all.

    :param accelerator: the accelerator whose plugin manager gets the tracker plugins.
    :param log_with: ``Accelerator(log_with=...)``: tracker names, ``"all"``, tracker objects.
    :param strict: raise a tracker's error instead of warning once and training on.
    """

    def __init__(self, accelerator: Accelerator, log_with: Any, strict: bool = False) -> None:
        self.accelerator = accelerator
        self.strict = strict
        self.started = False
        self._warnings: set[str] = set()
        names, objects = split_trackers(log_with)
        #: The names of the trackers this accelerator logs with.
        self.names: list[str] = self._load(names, objects)

    def _load(self, names: list[str], objects: list[GeneralTracker]) -> list[str]:
        if not names and not objects:
            return []
        pm, disabled = self.accelerator.plugin_manager, self.accelerator.config.disable_plugins
        every_installed = names == ["all"]
        installed = discovery.installed_trackers()
        if every_installed:
            names = list(installed)
        every = names + [t.name for t in objects]
        repeated = sorted({n for n in every if every.count(n) > 1})
        if repeated:
            raise ValueError(
                f"log_with names the tracker {repeated[0]!r} twice: give each tracker once "
                f"(tracker objects are told apart by their .name)"
            )
        for name in names:
            if name not in installed:
                # Raises with the installed trackers and the extra that adds this one.
                manager.load_selected(pm, discovery.TRACKERS_GROUP, name, disabled)
        if self.accelerator.process.is_main_process:
            # "all" means every tracker that can run here, as in HF Accelerate: a tracker
            # plugin whose library is not installed is left out.
            names = [name for name in names if self._load_one(name, skip_missing_library=every_installed)]
            for tracker in objects:
                manager.register(pm, TrackerObjectPlugin(tracker), name=f"tracker-object:{tracker.name}")
        return names + [t.name for t in objects]

    def _load_one(self, name: str, skip_missing_library: bool) -> bool:
        """Load tracker plugin ``name``; ``False`` when its library is missing and ``skip_missing_library``."""
        pm, disabled = self.accelerator.plugin_manager, self.accelerator.config.disable_plugins
        try:
            manager.load_selected(pm, discovery.TRACKERS_GROUP, name, disabled)
        except PluginError as exc:
            missing = exc.__cause__
            if not isinstance(missing, ImportError):
                raise
            if skip_missing_library:
                return False
            hint = catalog.install_hint(discovery.TRACKERS_GROUP, name)
            raise PluginError(
                f"tracker {name!r} is installed but cannot run: {missing}"
                + ("" if "pip install" in str(missing) else f"; {hint}")
            ) from missing
        return True

    def init_trackers(
        self, project_name: str, config: Mapping[str, Any] | None = None, init_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        """Start a run in every tracker of ``log_with`` (main process only), storing ``config``."""
        self.started = True
        accelerator = self.accelerator
        if accelerator.process.is_main_process:
            call_each(
                accelerator.plugin_manager, "plait_tracker_start", self.strict, self._warnings,
                accelerator=accelerator, project_name=project_name, config=config, init_kwargs=dict(init_kwargs or {}),
            )

    def log(self, values: Mapping[str, Any], step: int | None = None, log_kwargs: Mapping[str, Any] | None = None) -> None:
        """Log ``values`` at ``step`` to every tracker (main process only)."""
        if not self.started:
            if self.names:
                raise RuntimeError(
                    "accelerator.log() was called before accelerator.init_trackers(): "
                    "call init_trackers(project_name) once before logging"
                )
            if "log-before-init" not in self._warnings:
                self._warnings.add("log-before-init")
                warnings.warn(
                    "accelerator.log() was called with no trackers (log_with is empty) and before init_trackers(): "
                    "nothing is logged", stacklevel=2,
                )
            return
        accelerator = self.accelerator
        if accelerator.process.is_main_process:
            call_each(
                accelerator.plugin_manager, "plait_tracker_log", self.strict, self._warnings,
                accelerator=accelerator, values=values, step=step, log_kwargs=dict(log_kwargs or {}),
            )

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The tracker called ``name`` (its native object with ``unwrap=True``); a no-op one off the main process."""
        accelerator = self.accelerator
        if not accelerator.process.is_main_process:
            return GeneralTracker()
        tracker = accelerator.hooks.tracker_get(accelerator, name, unwrap)
        if tracker is None:
            raise ValueError(
                f"no tracker named {name!r}: this accelerator logs with {self.names or 'no tracker'} "
                f"(set with Accelerator(log_with=...))"
            )
        return tracker

    def finish(self) -> None:
        """Finish every tracker's run (``end_training``)."""
        accelerator = self.accelerator
        if accelerator.process.is_main_process and self.started:
            call_each(accelerator.plugin_manager, "plait_tracker_finish", self.strict, self._warnings,
                      accelerator=accelerator)
            self.started = False


def split_trackers(log_with: Any) -> tuple[list[str], list[GeneralTracker]]:
    """Tracker names and tracker objects of ``log_with`` (a name, an object, or a list of both)."""
    if log_with is None:
        return [], []
    items = [log_with] if isinstance(log_with, (str, GeneralTracker)) else list(log_with)
    names = [str(getattr(i, "value", i)) for i in items if not isinstance(i, GeneralTracker)]
    if "all" in names and len(names) > 1:
        raise ValueError(f"log_with={names!r}: 'all' stands alone; name the trackers or use 'all'")
    return names, [i for i in items if isinstance(i, GeneralTracker)]
