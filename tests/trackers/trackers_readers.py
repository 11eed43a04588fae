"""Reading back what the trackers wrote, with each library's own formats and readers.

* TensorBoard: tensorboard's ``EventAccumulator`` over the run's event files,
  hparams decoded with tensorboard's ``HParamsPluginData`` protobuf.
* wandb: the offline run's ``run-<id>.wandb`` file, a LevelDB-style record log
  (wandb's transaction log: 7-byte file header ``:W&B``, 32 KiB blocks, records
  with a CRC-32 of their type and data), each record a
  ``wandb.proto.wandb_internal_pb2.Record``. wandb no longer ships a Python
  reader for it, so the log framing is read here and checked record by record
  against its checksum; the records themselves are decoded by wandb's protobufs.
* Comet: the offline archive (a zip) with ``experiment.json`` and
  ``messages.json`` (one JSON message per line: parameters, metrics, uploads).
"""

from __future__ import annotations

import json
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- #
# TensorBoard
# --------------------------------------------------------------------------- #


@dataclass
class TensorBoardRun:
    directory: Path
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    histograms: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (step, number of values)
    images: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)  # (step, width, height)
    hparams: dict[str, Any] = field(default_factory=dict)
    session_ended: bool = False
    event_files: list[Path] = field(default_factory=list)


def read_tensorboard(directory: str | Path) -> TensorBoardRun:
    """The run written in ``directory`` (its own event files only, not sub-runs)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    directory = Path(directory)
    accumulator = EventAccumulator(
        str(directory), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0, "images": 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    run = TensorBoardRun(directory, event_files=sorted(directory.glob("events.out.tfevents.*")))
    for tag in tags["scalars"]:
        run.scalars[tag] = [(event.step, event.value) for event in accumulator.Scalars(tag)]
    for tag in tags["histograms"]:
        run.histograms[tag] = [(event.step, int(event.histogram_value.num)) for event in accumulator.Histograms(tag)]
    for tag in tags["images"]:
        run.images[tag] = [(event.step, event.width, event.height) for event in accumulator.Images(tag)]
    for tag in _plugin_tags(accumulator, "text"):
        name = tag.removesuffix("/text_summary")
        run.texts[name] = [
            (event.step, event.tensor_proto.string_val[0].decode()) for event in accumulator.Tensors(tag)
        ]
    for tag, content in _plugin_tags(accumulator, "hparams").items():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for name, value in data.session_start_info.hparams.items():
                run.hparams[name] = getattr(value, value.WhichOneof("kind"))
        if data.HasField("session_end_info") or tag.endswith("session_end_info"):
            run.session_ended = True
    return run


def _plugin_tags(accumulator: Any, plugin: str) -> dict[str, bytes]:
    try:
        return accumulator.PluginTagToContent(plugin)  # type: ignore[no-any-return]
    except KeyError:  # no summary of that plugin in the run
        return {}


# --------------------------------------------------------------------------- #
# wandb
# --------------------------------------------------------------------------- #

_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: str | Path) -> list[Any]:
    """Every record of a ``.wandb`` transaction log, as ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    raw = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(raw, 0)
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a wandb transaction log {raw[:7]!r}"
    position, pending, payloads = _HEADER.size, b"", []
    while position + _RECORD.size <= len(raw):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _RECORD.size:  # the writer pads the tail of a block with zeros
            position += left_in_block
            continue
        checksum, length, kind = _RECORD.unpack_from(raw, position)
        if (checksum, length, kind) == (0, 0, 0):  # padding up to the next block
            position += left_in_block
            continue
        data = raw[position + _RECORD.size : position + _RECORD.size + length]
        if len(data) < length:  # the writer is still at it: the records so far
            break
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) == checksum, f"{path}: bad checksum at byte {position}"
        position += _RECORD.size + length
        if kind == _FULL:
            payloads.append(data)
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            payloads.append(pending + data)
            pending = b""
        else:
            raise AssertionError(f"{path}: unknown record type {kind} at byte {position}")
    return [wandb_internal_pb2.Record.FromString(payload) for payload in payloads]


def _put(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        target = target.setdefault(key, {})
    target[keys[-1]] = value


def _items(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        keys = list(item.nested_key) or [item.key]
        _put(out, keys, json.loads(item.value_json))
    return out


@dataclass
class WandbRun:
    directory: Path
    run_id: str
    project: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    finished: bool


def read_wandb_runs(root: str | Path, timeout: float = 10.0) -> list[WandbRun]:
    """Every offline run under ``root`` (``.../wandb/offline-run-*/run-*.wandb``).

    ``run.finish()`` returns once wandb's service has the exit record, and the service
    closes the file a moment later: a run is read again until its exit record is there
    (or ``timeout`` seconds have passed).
    """
    runs = []
    for path in sorted(Path(root).rglob("offline-run-*/run-*.wandb")):
        deadline = time.monotonic() + timeout
        records = wandb_records(path)
        while not any(record.WhichOneof("record_type") == "exit" for record in records) and time.monotonic() < deadline:
            time.sleep(0.05)
            records = wandb_records(path)
        runs.append(_wandb_run(path, records))
    return runs


def _wandb_run(path: Path, records: list[Any]) -> WandbRun:
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    run_id = project = ""
    finished = False
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id, project = record.run.run_id, record.run.project
            config.update(_items(record.run.config.update))
        elif kind == "config":
            config.update(_items(record.config.update))
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "exit":
            finished = True
    config.pop("_wandb", None)
    return WandbRun(path.parent, run_id, project, config, history, finished)


# --------------------------------------------------------------------------- #
# Comet
# --------------------------------------------------------------------------- #


@dataclass
class CometArchive:
    path: Path
    project_name: str
    parameters: dict[str, Any]
    metrics: dict[str, list[tuple[int | None, float]]]
    texts: list[tuple[int | None, str, str]]  # (step, name, text)
    uploads: list[tuple[str, str | None, int | None]]  # (upload type, name, step)


def read_comet_archives(root: str | Path) -> list[CometArchive]:
    """Every offline archive (``*.zip``) under ``root``."""
    archives = []
    for path in sorted(Path(root).rglob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            experiment = json.loads(archive.read("experiment.json"))
            parameters: dict[str, Any] = {}
            metrics: dict[str, list[tuple[int | None, float]]] = {}
            texts: list[tuple[int | None, str, str]] = []
            uploads: list[tuple[str, str | None, int | None]] = []
            for line in archive.read("messages.json").decode().splitlines():
                message = json.loads(line)
                payload = message["payload"]
                if message["type"] == "parameter_msg" and payload["param"]["source"] == "manual":
                    parameters[payload["param"]["paramName"]] = payload["param"]["paramValue"]
                elif message["type"] == "metric_msg":
                    metric = payload["metric"]
                    metrics.setdefault(metric["metricName"], []).append((metric["step"], metric["metricValue"]))
                elif message["type"] == "file_upload":
                    extra = payload.get("additional_params", {})
                    name = extra.get("figName") or payload.get("metadata", {}).get("name") or extra.get("fileName")
                    uploads.append((payload["upload_type"], name, extra.get("step")))
                    if payload["upload_type"] == "text-sample":
                        text = archive.read(payload["file_path"]).decode()
                        texts.append((extra.get("step"), payload["metadata"]["name"], text))
        archives.append(CometArchive(path, experiment["project_name"], parameters, metrics, texts, uploads))
    return archives
