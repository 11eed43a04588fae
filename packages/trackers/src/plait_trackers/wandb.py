"""Tracker ``wandb``: a Weights & Biases run, files under ``<logging_dir>/<project_name>/wandb``.

One ``run.log`` per ``accelerator.log``: scalars, strings, dicts of scalars
(nested in the run's history), images (``wandb.Image``), histograms
(``wandb.Histogram``), and any wandb object (``wandb.Table``...) as it is. The run
config is the wandb config. ``WANDB_MODE=offline`` (or
``init_kwargs={"wandb": {"mode": "offline"}}``) keeps everything on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait_trackers import values as V
from plait_trackers.base import PluginTracker

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run


class WandBTracker(PluginTracker):
    """HF Accelerate's ``WandBTracker``: ``WandBTracker(run_name, **init_kwargs)``.

    Loaded by name, ``init_kwargs={"wandb": {...}}`` goes to ``wandb.init`` (``entity``,
    ``name``, ``tags``, ``mode``...); ``project`` defaults to the project name and
    ``dir`` to ``<logging_dir>/<project_name>``. ``log_kwargs={"wandb": {...}}`` goes to
    ``run.log`` (``commit``...). ``get_tracker("wandb", unwrap=True)`` is the run.
    """

    name = "wandb"
    library = "wandb"
    extra = "wandb"
    stores = "numbers, strings, dicts of numbers, images, histograms and wandb objects"

    def __init__(self, run_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(run_name, **kwargs)
        self.run: Run | None = None

    @property
    def tracker(self) -> Run | None:
        return self.run

    def _start(self) -> None:
        import wandb

        kwargs = dict(self.init_kwargs)
        kwargs.setdefault("project", self.run_name)
        if "dir" not in kwargs:
            directory = self._run_directory()
            if directory is not None:
                kwargs["dir"] = directory
        self.run = wandb.init(**kwargs)

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        self._check_running()
        assert self.run is not None
        self.run.config.update(dict(values), allow_val_change=True)

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        import wandb

        self._check_running()
        assert self.run is not None
        row: dict[str, Any] = {}
        for key, value in values.items():
            kind = V.kind(value)
            if kind == V.SCALAR:
                row[key] = V.scalar(value)
            elif kind == V.TEXT:
                row[key] = value
            elif kind == V.SCALARS:
                row[key] = V.scalars(value)
            elif kind == V.HISTOGRAM:
                row[key] = wandb.Histogram(V.histogram_array(value))  # type: ignore[arg-type]  # numpy arrays work
            elif kind in (V.IMAGE, V.IMAGES):
                images = self._convert(key, value, _wandb_images, value if kind == V.IMAGES else [value])
                if images is not None:
                    row[key] = images if kind == V.IMAGES else images[0]
            elif type(value).__module__.partition(".")[0] == "wandb":
                row[key] = value  # the user's own wandb object: wandb knows it
            else:
                self._skip(key, value)
        if row:
            self.run.log(row, step=step, **kwargs)

    def _finish(self) -> None:
        assert self.run is not None
        self.run.finish()


def _wandb_images(images: list[Any]) -> list[Any]:
    import wandb

    return [wandb.Image(V.image_array(image), caption=V.caption(image)) for image in images]
