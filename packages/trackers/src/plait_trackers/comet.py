"""Tracker ``comet_ml``: a Comet experiment started by ``comet_ml.start``.

Scalars (``log_metric``), strings (``log_text``), dicts of scalars
(``log_metrics`` with the key as prefix: ``loss_train``), images (``log_image``,
which needs Pillow) and histograms (``log_histogram_3d``). The run config is the
experiment's parameters. Offline (``init_kwargs={"comet_ml": {"online": False}}``
or ``COMET_START_ONLINE=0``), the archive to upload later is written under
``<logging_dir>/<project_name>`` unless an offline directory is configured.
Comet's automatic metric logging is off (it would log the loss and the scalars
sent to TensorBoard a second time) unless ``experiment_config`` is given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait_trackers import values as V
from plait_trackers.base import PluginTracker

if TYPE_CHECKING:
    from comet_ml.experiment import CometExperiment


class CometMLTracker(PluginTracker):
    """HF Accelerate's ``CometMLTracker``: ``CometMLTracker(run_name, **start_kwargs)``.

    Loaded by name, ``init_kwargs={"comet_ml": {...}}`` goes to ``comet_ml.start``
    (``workspace``, ``online``, ``experiment_config``...); ``project_name`` defaults to
    the project name. Without an ``experiment_config``, plait passes one with
    ``auto_metric_logging=False`` and, offline, ``offline_directory=<logging_dir>/<project_name>``. ``log_kwargs={"comet_ml": {...}}`` goes to each ``log_*`` call
    (``epoch``...). ``get_tracker("comet_ml", unwrap=True)`` is the experiment.
    """

    name = "comet_ml"
    library = "comet_ml"
    extra = "comet"

    def __init__(self, run_name: str | None = None, **kwargs: Any) -> None:
        super().__init__(run_name, **kwargs)
        self.experiment: CometExperiment | None = None

    @property
    def tracker(self) -> CometExperiment | None:
        return self.experiment

    def _start(self) -> None:
        import comet_ml

        kwargs = dict(self.init_kwargs)
        if "project_name" not in kwargs and "project" not in kwargs:
            kwargs["project_name"] = self.run_name
        if "experiment_config" not in kwargs:
            # plait logs every metric itself: comet's automatic metric logging would log the
            # scalars it sees going to TensorBoard, and the loss, a second time.
            config: dict[str, Any] = {"auto_metric_logging": False}
            directory = self._run_directory()
            if directory is not None and "COMET_OFFLINE_DIRECTORY" not in os.environ:
                config["offline_directory"] = directory
            kwargs["experiment_config"] = comet_ml.ExperimentConfig(**config)
        self.experiment = comet_ml.start(**kwargs)

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        self._experiment().log_parameters(dict(values))

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        experiment = self._experiment()
        step = self._step(step)
        for key, value in values.items():
            kind = V.kind(value)
            if kind == V.SCALAR:
                experiment.log_metric(key, V.scalar(value), step=step, **kwargs)
            elif kind == V.TEXT:
                experiment.log_text(value, step=step, metadata={"name": key}, **kwargs)
            elif kind == V.SCALARS:
                experiment.log_metrics(V.scalars(value), prefix=key, step=step, **kwargs)
            elif kind == V.HISTOGRAM:
                experiment.log_histogram_3d(V.histogram_array(value), name=key, step=step, **kwargs)
            elif kind in (V.IMAGE, V.IMAGES):
                images = self._convert(key, value, _pil_images, value if kind == V.IMAGES else [value])
                for image in images or ():
                    experiment.log_image(image, name=key, step=step, **kwargs)
            else:
                self._skip(key, value)

    def _finish(self) -> None:
        assert self.experiment is not None
        self.experiment.end()

    def _experiment(self) -> CometExperiment:
        self._check_running()
        assert self.experiment is not None
        return self.experiment


def _pil_images(images: list[Any]) -> list[Any]:
    """Images as PIL images: comet turns arrays into images only with matplotlib installed."""
    from PIL import Image

    return [Image.fromarray(V.image_array(image)) for image in images]
