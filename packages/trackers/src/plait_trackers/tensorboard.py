"""Tracker ``tensorboard``: event files under ``<logging_dir>/<project_name>``, through torch's ``SummaryWriter``.

Scalars (written as ``add_scalar`` writes them, all those of one ``log`` in one
event), strings (``add_text``), dicts of scalars (``add_scalars``: one sub-run per
key), images (``add_image``/``add_images``) and histograms (``add_histogram``). The run config is written as the run's
TensorBoard hparams (a session start in the run's own directory, so the HParams
dashboard pairs it with the run's scalars). Events are flushed by the writer's
own timer (``flush_secs``, 120 s) and at ``end_training``, not at every ``log``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait_trackers import values as V
from plait_trackers.base import PluginTracker

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter


class TensorBoardTracker(PluginTracker):
    """HF Accelerate's ``TensorBoardTracker``: ``TensorBoardTracker(run_name, logging_dir, **writer_kwargs)``.

    Loaded by name, ``init_kwargs={"tensorboard": {...}}`` goes to ``SummaryWriter``
    (``flush_secs``, ``max_queue``...); a ``log_dir`` there replaces
    ``<logging_dir>/<project_name>``. ``get_tracker("tensorboard", unwrap=True)`` is
    the ``SummaryWriter``.
    """

    name = "tensorboard"
    library = "tensorboard"
    extra = "tensorboard"
    requires_logging_directory = True

    def __init__(
        self, run_name: str | None = None, logging_dir: str | os.PathLike[str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(run_name, **kwargs)
        self.logging_dir = None if logging_dir is None else os.fspath(logging_dir)
        self.writer: SummaryWriter | None = None
        self.run_dir: str | None = None
        self._hparams_written = False

    @property
    def tracker(self) -> SummaryWriter | None:
        return self.writer

    def _start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        kwargs = dict(self.init_kwargs)
        log_dir = kwargs.pop("log_dir", None)
        if log_dir is None:
            log_dir = self._run_directory()
        if log_dir is None:
            raise ValueError(
                "the tensorboard tracker writes event files under the logging directory, and this run has none: "
                "pass Accelerator(project_dir=...) (or init_kwargs={'tensorboard': {'log_dir': ...}})"
            )
        self.run_dir = os.fspath(log_dir)
        self._hparams_written = False
        self.writer = SummaryWriter(self.run_dir, **kwargs)

    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        """Write ``values`` (nested mappings flattened to ``a/b``) as the run's hparams."""
        from tensorboard.plugins.hparams import plugin_data_pb2

        writer = self._writer()
        start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
        for name, value in V.flat_config(values).items():
            if isinstance(value, bool):
                start.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                start.hparams[name].number_value = value
            elif value is not None:
                start.hparams[name].string_value = value
        _file_writer(writer).add_summary(_hparams_summary("_hparams_/session_start_info", session_start_info=start))
        self._hparams_written = True

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        writer = self._writer()
        step = self._step(step)
        # The scalars of one call go out as one event, as add_scalar would write each of them: each
        # event is a hand-off to TensorBoard's writer thread, which costs more than making it.
        batch: list[tuple[str, float]] | None = [] if set(kwargs) <= {"walltime"} else None
        for key, value in values.items():
            kind = V.kind(value)
            if kind == V.SCALAR and batch is not None:
                batch.append((key, V.scalar(value)))
            elif kind == V.SCALAR:
                writer.add_scalar(key, V.scalar(value), global_step=step, **kwargs)
            elif kind == V.TEXT:
                writer.add_text(key, value, global_step=step, **kwargs)
            elif kind == V.SCALARS:
                writer.add_scalars(key, V.scalars(value), global_step=step, **kwargs)
            elif kind == V.HISTOGRAM:
                writer.add_histogram(key, V.histogram_array(value), global_step=step, **kwargs)
            elif kind in (V.IMAGE, V.IMAGES):
                arrays = self._convert(key, value, _hwc_images, value if kind == V.IMAGES else [value])
                if arrays is not None:
                    self._log_images(writer, key, arrays, step, kwargs)
            else:
                self._skip(key, value)
        if batch:
            from tensorboard.compat.proto.summary_pb2 import Summary

            summary = Summary(value=[Summary.Value(tag=key, simple_value=value) for key, value in batch])
            _file_writer(writer).add_summary(summary, step, kwargs.get("walltime"))

    def _log_images(self, writer: SummaryWriter, key: str, arrays: list[Any], step: int, kwargs: Any) -> None:
        import numpy as np

        if len(arrays) == 1:
            writer.add_image(key, arrays[0], global_step=step, dataformats="HWC", **kwargs)
        elif len({array.shape for array in arrays}) == 1:
            writer.add_images(key, np.stack(arrays), global_step=step, dataformats="NHWC", **kwargs)
        else:
            for index, array in enumerate(arrays):
                writer.add_image(f"{key}/{index}", array, global_step=step, dataformats="HWC", **kwargs)

    def _finish(self) -> None:
        writer = self._writer(running=False)
        if self._hparams_written:
            from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

            end = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
            _file_writer(writer).add_summary(_hparams_summary("_hparams_/session_end_info", session_end_info=end))
        writer.close()

    def _writer(self, running: bool = True) -> SummaryWriter:
        if running:
            self._check_running()
        assert self.writer is not None
        return self.writer


def _hwc_images(images: list[Any]) -> list[Any]:
    """Images as ``(H, W, C)`` ``uint8`` arrays, grey ones as three equal channels."""
    import numpy as np

    arrays = [V.image_array(image) for image in images]
    return [array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2) for array in arrays]


def _file_writer(writer: SummaryWriter) -> Any:
    """The writer's event file (as torch's own ``add_hparams`` reaches it)."""
    file_writer = writer.file_writer
    assert file_writer is not None, "SummaryWriter has no event file: it was closed"
    return file_writer


def _hparams_summary(tag: str, **data: Any) -> Any:
    """A summary of TensorBoard's hparams plugin (what its HParams dashboard reads), as torch's ``add_hparams`` writes."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = plugin_data_pb2.HParamsPluginData(version=0, **data).SerializeToString()
    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="hparams", content=content))
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])
