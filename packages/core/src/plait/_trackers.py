"""The tracker methods of ``Accelerator``: HF Accelerate's ``init_trackers``, ``log``, ``get_tracker``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from plait import plugins as plugins_module
from plait._process import ProcessInfo
from plait.config import Config
from plait.errors import PluginError
from plait.tracking import GeneralTracker, TrackerObjectPlugin, call_each


class TrackersMixin(ProcessInfo):
    """Experiment tracking on the main process, through the ``plait_tracker_*`` hooks."""

    _pm: Any
    config: Config
    _trackers_started: bool
    _tracker_warnings: set[str]
    _strict_trackers: bool
    _tracker_names: list[str]

    def _load_trackers(self, names: list[str], objects: list[GeneralTracker]) -> list[str]:
        every_installed = names == ["all"]
        if every_installed:
            names = list(plugins_module.installed_trackers())
        installed = plugins_module.installed_trackers()
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
                plugins_module.load_selected(self._pm, plugins_module.TRACKERS_GROUP, name, self.config.disable_plugins)
        if self.is_main_process:
            # "all" means every tracker that can run here, as in HF Accelerate: a tracker
            # plugin whose library is not installed is left out.
            names = [name for name in names if self._load_tracker(name, skip_missing_library=every_installed)]
            for tracker in objects:
                plugins_module.register(self._pm, TrackerObjectPlugin(tracker), name=f"tracker-object:{tracker.name}")
        return names + [t.name for t in objects]

    def _load_tracker(self, name: str, skip_missing_library: bool) -> bool:
        """Load tracker plugin ``name``; ``False`` when its library is missing and ``skip_missing_library``."""
        try:
            plugins_module.load_selected(self._pm, plugins_module.TRACKERS_GROUP, name, self.config.disable_plugins)
        except PluginError as exc:
            missing = exc.__cause__
            if not isinstance(missing, ImportError):
                raise
            if skip_missing_library:
                return False
            hint = plugins_module.install_hint(plugins_module.TRACKERS_GROUP, name)
            raise PluginError(
                f"tracker {name!r} is installed but cannot run: {missing}"
                + ("" if "pip install" in str(missing) else f"; {hint}")
            ) from missing
        return True

    def init_trackers(
        self, project_name: str, config: Mapping[str, Any] | None = None, init_kwargs: Mapping[str, Any] | None = None
    ) -> None:
        """Start a run in every tracker of ``log_with`` (main process only), storing ``config``."""
        self._trackers_started = True
        if self.is_main_process:
            call_each(
                self._pm, "plait_tracker_start", self._strict_trackers, self._tracker_warnings,
                accelerator=self, project_name=project_name, config=config, init_kwargs=dict(init_kwargs or {}),
            )

    def log(self, values: Mapping[str, Any], step: int | None = None, log_kwargs: Mapping[str, Any] | None = None) -> None:
        """Log ``values`` at ``step`` to every tracker (main process only)."""
        if not self._trackers_started:
            if self._tracker_names:
                raise RuntimeError(
                    "accelerator.log() was called before accelerator.init_trackers(): "
                    "call init_trackers(project_name) once before logging"
                )
            if "log-before-init" not in self._tracker_warnings:
                self._tracker_warnings.add("log-before-init")
                warnings.warn(
                    "accelerator.log() was called with no trackers (log_with is empty) and before init_trackers(): "
                    "nothing is logged", stacklevel=2,
                )
            return
        if self.is_main_process:
            call_each(
                self._pm, "plait_tracker_log", self._strict_trackers, self._tracker_warnings,
                accelerator=self, values=values, step=step, log_kwargs=dict(log_kwargs or {}),
            )

    def get_tracker(self, name: str, unwrap: bool = False) -> Any:
        """The tracker called ``name`` (its native object with ``unwrap=True``); a no-op one off the main process."""
        if not self.is_main_process:
            return GeneralTracker()
        tracker = self._pm.hook.plait_tracker_get(accelerator=self, name=name, unwrap=unwrap)
        if tracker is None:
            raise ValueError(
                f"no tracker named {name!r}: this accelerator logs with {self._tracker_names or 'no tracker'} "
                f"(set with Accelerator(log_with=...))"
            )
        return tracker

    def _finish_trackers(self) -> None:
        if self.is_main_process and self._trackers_started:
            call_each(self._pm, "plait_tracker_finish", self._strict_trackers, self._tracker_warnings, accelerator=self)
            self._trackers_started = False


def _split_trackers(log_with: Any) -> tuple[list[str], list[GeneralTracker]]:
    if log_with is None:
        return [], []
    items = [log_with] if isinstance(log_with, (str, GeneralTracker)) else list(log_with)
    names = [str(getattr(i, "value", i)) for i in items if not isinstance(i, GeneralTracker)]
    if "all" in names and len(names) > 1:
        raise ValueError(f"log_with={names!r}: 'all' stands alone; name the trackers or use 'all'")
    return names, [i for i in items if isinstance(i, GeneralTracker)]
