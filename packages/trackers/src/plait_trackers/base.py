"""What the three trackers share: HF Accelerate's tracker object, exposed through plait's tracker hooks.

Each tracker is a :class:`~plait.GeneralTracker` (``start``,
``store_init_configuration``, ``log``, ``finish``, ``tracker``), so that it can
be passed to ``Accelerator(log_with=[...])`` as an object, as in HF Accelerate,
and a plugin whose hook implementations call those methods, so that it can be
named by its entry point (``log_with="tensorboard"``). plait makes one instance
per ``Accelerator``, on the main process only.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from plait import hookimpl
from plait.errors import MissingLibrary
from plait.plugins.install_commands import install_hint, pip_command
from plait.tracking import GeneralTracker, caller_stacklevel
from plait_trackers import values as V

if TYPE_CHECKING:
    from plait.accelerator import Accelerator


def require_library(library: str, tracker: str, extra: str) -> None:
    """Raise :class:`plait.errors.MissingLibrary` (a :class:`ModuleNotFoundError`) naming
    ``pip install plait[<extra>]`` when ``library`` is missing (and, from a checkout, the command that works
    there: :func:`plait.plugins.install_commands.install_hint`): ``plait plugins`` then lists the tracker
    as needing the index's command, and only a run that names the tracker in ``log_with`` gets the error.

    Only looks the module up (``importlib.util.find_spec``): nothing is imported.
    """
    try:
        found = importlib.util.find_spec(library) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a module without a spec
        found = False
    if not found:
        raise MissingLibrary(
            f"the {tracker} tracker needs the {library!r} library, which is not installed: {install_hint(extra)}",
            library=library,
            install=pip_command(extra),
        )


class PluginTracker(GeneralTracker):
    """Base of plait's tracker plugins. Subclasses set the class attributes and implement the
    :class:`~plait.GeneralTracker` methods with the library imported inside them.

    :param run_name: the run (project) name; set by ``init_trackers`` when the tracker is
        loaded by name.
    :param kwargs: keyword arguments for the library's run constructor; when loaded by
        name, ``init_kwargs[<name>]`` of ``init_trackers``.
    """

    #: The entry-point name, as in ``log_with``.
    name = "tracker"
    #: The module that must be importable.
    library: ClassVar[str] = ""
    #: The extra of the ``plait`` distribution that installs the library.
    extra: ClassVar[str] = ""
    #: What the tracker stores, for the message about a value it skips.
    stores: ClassVar[str] = "numbers, strings, dicts of numbers, images and histograms"

    def __init__(self, run_name: str | None = None, **kwargs: Any) -> None:
        require_library(self.library, self.name, self.extra)
        self.run_name = run_name
        self.init_kwargs: dict[str, Any] = dict(kwargs)
        self.logging_dir: str | None = None
        self._warned: set[str] = set()
        self._next_step = 0
        self._running = False
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------ hooks
    @hookimpl
    def plait_tracker_start(
        self, accelerator: Accelerator, project_name: str, config: Mapping[str, Any] | None, init_kwargs: Mapping[str, Any]
    ) -> None:
        self.run_name = project_name
        self.logging_dir = accelerator.logging_dir
        self.init_kwargs = dict(init_kwargs.get(self.name, {}))
        self.start()
        if config is not None:
            self.store_init_configuration(config)

    @hookimpl
    def plait_tracker_log(self, values: Mapping[str, Any], step: int | None, log_kwargs: Mapping[str, Any]) -> None:
        self.log(values, step=step, **log_kwargs.get(self.name, {}))

    @hookimpl
    def plait_tracker_finish(self) -> None:
        self.finish()

    @hookimpl
    def plait_env_report(self) -> list[tuple[str, str]]:
        from importlib import metadata

        try:
            return [(f"{self.name} tracker ({self.library})", metadata.version(self.library))]
        except metadata.PackageNotFoundError:
            return [(f"{self.name} tracker ({self.library})", f"not installed: {install_hint(self.extra)}")]

    @hookimpl
    def plait_tracker_get(self, name: str, unwrap: bool) -> Any:
        if name != self.name:
            return None
        if not unwrap:
            return self
        native = self.tracker
        if native is None:
            raise RuntimeError(self._not_running("has no run to unwrap"))
        return native

    # ------------------------------------------------------------------ for subclasses
    def start(self) -> None:
        if self._running:  # a second init_trackers starts a new run, as a new tracker would
            self.finish()
        if not self.run_name:
            raise ValueError(
                f"{type(self).__name__} needs a run name: {type(self).__name__}('my-run', ...) when passed as an "
                f"object, or init_trackers('my-run') when named in log_with"
            )
        self._warned.clear()
        self._next_step = 0
        self._start_error = None
        try:
            self._start()
        except BaseException as exc:
            self._start_error = exc
            raise
        self._running = True

    def _start(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        if self._running:
            self._running = False
            self._finish()

    def _finish(self) -> None:
        raise NotImplementedError

    def _run_directory(self) -> str | None:
        """``<logging_dir>/<run_name>``, created, or ``None`` without a logging directory (HF Accelerate's layout)."""
        if self.logging_dir is None:
            return None
        directory = os.path.join(self.logging_dir, str(self.run_name))
        os.makedirs(directory, exist_ok=True)
        return directory

    def _check_running(self) -> None:
        if not self._running:
            raise RuntimeError(self._not_running("cannot log"))

    def _not_running(self, what: str) -> str:
        if self._start_error is not None:
            return (
                f"the {self.name} tracker {what}: starting its run failed "
                f"({type(self._start_error).__name__}: {self._start_error})"
            )
        return f"the {self.name} tracker {what}: its run is not started (call accelerator.init_trackers first)"

    def _step(self, step: int | None) -> int:
        """``step``, or the tracker's own counter (one past the last step) when ``None``."""
        if step is None:
            step = self._next_step
        self._next_step = int(step) + 1
        return int(step)

    def _skip(self, key: str, value: Any, reason: str | None = None) -> None:
        """Warn, once per kind of value, that ``value`` is not stored."""
        what = V.kind(value)
        label = V.describe(value) if what == V.OTHER else what
        if label in self._warned:
            return
        self._warned.add(label)
        why = reason or f"it stores {self.stores}"
        warnings.warn(
            f"{self.name} tracker: {key!r} ({V.describe(value)}) was not logged: {why}; "
            f"further values of this kind ({label}) are skipped without a warning",
            stacklevel=caller_stacklevel(("plait", "plait_trackers")),
        )

    def _convert(self, key: str, value: Any, convert: Any, *args: Any) -> Any:
        """``convert(*args)``, or ``None`` after a warning about ``value`` when it cannot be converted
        (an image of the wrong shape, Pillow missing)."""
        try:
            return convert(*args)
        except (ValueError, TypeError, ImportError) as exc:
            self._skip(key, value, reason=f"{type(exc).__name__}: {exc}")
            return None

    def log_images(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """HF Accelerate's ``log_images``: each value an image or a list of images (PIL, arrays, tensors)."""
        from plait.tracking import Image

        batch: dict[str, Any] = {}
        for key, images in values.items():
            if V.is_image(images) or (V.is_array(images) and len(images.shape) <= 3):
                batch[key] = images if V.is_image(images) else Image(images)
            else:
                batch[key] = [image if V.is_image(image) else Image(image) for image in images]
        self.log(batch, step=step, **kwargs)
