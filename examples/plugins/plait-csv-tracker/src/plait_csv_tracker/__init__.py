"""plait tracker ``csv``: each ``accelerator.log(...)`` a row of ``<logging_dir>/<run>/metrics.csv``, the run's
hyper-parameters in ``<logging_dir>/<run>/hparams.json``.

A third-party tracker written against plait's public API only. One class serves both ways a user names a tracker:

- by name, ``Accelerator(log_with="csv", project_dir="runs")``: the ``plait.trackers`` entry point names this
  class; plait makes one instance per Accelerator, on the main process only, and calls its ``@hookimpl``
  methods (:mod:`plait.hookspecs`, the tracker group): ``init_trackers`` -> ``plait_tracker_start``, ``log`` ->
  ``plait_tracker_log``, ``end_training`` -> ``plait_tracker_finish``, ``get_tracker`` -> ``plait_tracker_get``;
- as an object, ``Accelerator(log_with=[CSVTracker("run", logging_dir="runs")])``, HF Accelerate's way: it is a
  :class:`plait.GeneralTracker`, whose ``start``/``store_init_configuration``/``log``/``finish`` the hooks call.

The files are written by :mod:`plait_csv_tracker.files`; what a value becomes (numbers, strings, dicts of
them; images and histograms skipped with one warning) is :mod:`plait_csv_tracker.values`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait import GeneralTracker, hookimpl
from plait_csv_tracker.files import MetricsFile, write_hparams
from plait_csv_tracker.values import flatten

if TYPE_CHECKING:
    from plait.accelerator import Accelerator

__all__ = ["CSVTracker"]


class CSVTracker(GeneralTracker):
    """Metrics as CSV, hyper-parameters as JSON, under ``logging_dir/run_name``.

    :param run_name: the run's folder name; when loaded by name, the project name of ``init_trackers``.
    :param logging_dir: where run folders go; when loaded by name, ``init_kwargs={"csv": {"logging_dir": ...}}``
        or else the accelerator's ``logging_dir`` (``project_dir``).
    """

    name = "csv"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, run_name: str | None = None, logging_dir: str | os.PathLike[str] | None = None) -> None:
        self.run_name = run_name
        self.logging_dir = None if logging_dir is None else Path(logging_dir)
        self.metrics: MetricsFile | None = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ plait's tracker hooks
    @hookimpl
    def plait_tracker_start(
        self, accelerator: Accelerator, project_name: str, config: Mapping[str, Any] | None, init_kwargs: Mapping[str, Any]
    ) -> None:
        options = dict(init_kwargs.get(self.name, {}))
        unknown = sorted(set(options) - {"logging_dir"})
        if unknown:
            raise ValueError(f"the csv tracker got init_kwargs {{'csv': {{{unknown[0]!r}: ...}}}}: it accepts only "
                             f"'logging_dir' (where run folders go)")
        self.run_name = project_name
        directory = options.get("logging_dir", accelerator.logging_dir)
        self.logging_dir = None if directory is None else Path(directory)
        self.start()
        if config is not None:
            self.store_init_configuration(config)

    @hookimpl
    def plait_tracker_log(self, values: Mapping[str, Any], step: int | None, log_kwargs: Mapping[str, Any]) -> None:
        self.log(values, step=step)

    @hookimpl
    def plait_tracker_finish(self) -> None:
        self.finish()

    @hookimpl
    def plait_tracker_get(self, name: str, unwrap: bool) -> Any:
        if name != self.name:
            return None  # another tracker's name: not ours to answer
        return self.tracker if unwrap else self

    # ------------------------------------------------------------------ HF Accelerate's GeneralTracker
    def start(self) -> None:
        if self.logging_dir is None or not self.run_name:
            raise ValueError(
                "the csv tracker writes files and needs a folder and a run name: Accelerator(log_with='csv', "
                "project_dir='runs') and init_trackers('my-run'), or CSVTracker('my-run', logging_dir='runs')"
            )
        self.finish()  # a second init_trackers starts the new run's files
        self._warned.clear()
        self.metrics = MetricsFile(self.logging_dir / self.run_name / "metrics.csv")

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        write_hparams(self._running().path.with_name("hparams.json"), values)

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        row, skipped = flatten(values)
        for key, kind in skipped:
            self._warn_once(key, kind)
        self._running().append(step, row)

    def finish(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None

    @property
    def tracker(self) -> Any:
        """The CSV file's path: what ``get_tracker("csv", unwrap=True)`` returns."""
        return self._running().path

    # ------------------------------------------------------------------ helpers
    def _running(self) -> MetricsFile:
        if self.metrics is None:
            raise RuntimeError("the csv tracker has no run: call accelerator.init_trackers('my-run') first")
        return self.metrics

    def _warn_once(self, key: str, kind: str) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        import warnings

        warnings.warn(f"csv tracker: {key!r} ({kind}) was not logged: a CSV cell holds numbers and strings; further "
                      f"values of this kind are skipped without a warning", stacklevel=4)
