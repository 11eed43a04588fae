"""Reading torch.distributed.checkpoint (DCP) folders without running code from them.

DCP's own ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with ``pickle.load``: a crafted
file runs whatever it names. Here ``.metadata`` is unpickled by :class:`MetadataUnpickler`, which resolves
only the classes DCP's ``Metadata`` is made of (found by pickling the metadata of real saves: models and
optimizers, 1 and 2 processes), and the result is checked before DCP sees it:

* every entry is a tensor (``TensorStorageMetadata``): plait gives DCP tensors only, and DCP reads a
  bytes entry with ``torch.load(weights_only=False)``, so a bytes or object entry is refused;
* every piece of data lies in a ``.distcp`` file of the folder that the checkpoint's manifest lists
  (verified by checksum), at a plain offset, with no stream transform.

:class:`ListedFilesReader` is the ``FileSystemReader`` DCP loads through: its ``read_metadata`` is the
restricted one, and it reads no bytes entry. Imported when a DCP folder is read (fsdp, merge_fsdp_weights).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader, _StorageInfo
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType

from plait.errors import CheckpointError

METADATA = ".metadata"

#: module -> the names in it a DCP ``.metadata`` file may refer to (torch dtypes are added by ``_allowed``).
_CLASSES: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": frozenset({
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
        "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
    }),
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),  # a layout by its name (torch.strided)
    "pathlib": frozenset({"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}


@functools.cache
def _allowed() -> dict[str, frozenset[str]]:
    dtypes = frozenset(name for name, value in vars(torch).items() if isinstance(value, torch.dtype))
    return {**_CLASSES, "torch": frozenset({"Size"}) | dtypes}


class MetadataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the classes of DCP's metadata; anything else is an
    ``UnpicklingError`` naming it, raised before it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _allowed().get(module, ()):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}', which is not part of DCP's metadata")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("a persistent id, which DCP's metadata never holds")


def read_metadata(folder: Path, listed: Collection[str]) -> Metadata:
    """The checked ``Metadata`` of DCP folder ``folder``; ``listed`` are the names of the folder's files
    that the checkpoint's manifest lists. A crafted, damaged or foreign file is a
    :class:`~plait.errors.CheckpointError` naming it, and nothing of it runs."""
    path = folder / METADATA
    if METADATA not in listed:
        raise CheckpointError(
            f"the checkpoint's manifest does not list {path}: a DCP folder plait wrote always has it; "
            f"nothing was loaded (load a checkpoint written by save_state)"
        )
    try:
        with open(path, "rb") as file:
            metadata = MetadataUnpickler(file).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint file {path} was refused: it refers to a {exc}, so it was not unpickled (a crafted or "
            f"foreign file; nothing of it ran); nothing was loaded (load a checkpoint plait wrote)"
        ) from None
    except Exception as exc:  # truncated, or the allowed classes built with wrong arguments
        raise CheckpointError(
            f"checkpoint file {path} is not DCP metadata ({type(exc).__name__}: {exc}); nothing was loaded"
        ) from None
    _check(metadata, path, listed)
    checked: Metadata = metadata
    return checked


def _check(metadata: Any, path: Path, listed: Collection[str]) -> None:
    def refuse(problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint file {path} was refused: {problem}; nothing was loaded "
                               f"(load a checkpoint written by save_state)")

    if type(metadata) is not Metadata:
        raise refuse(f"it holds a {type(metadata).__name__}, not DCP's Metadata")
    entries = metadata.state_dict_metadata
    if not isinstance(entries, dict):
        raise refuse("its state_dict_metadata is not a dict")
    for key, entry in entries.items():
        if type(entry) is not TensorStorageMetadata:
            raise refuse(f"entry {key!r} is a {type(entry).__name__}, not a tensor: plait gives DCP tensors only, "
                         f"and DCP would unpickle that entry without restriction")
        if not (isinstance(key, str) and isinstance(entry.size, torch.Size)
                and type(entry.properties) is TensorProperties and isinstance(entry.properties.dtype, torch.dtype)
                and isinstance(entry.chunks, list)
                and all(type(c) is ChunkStorageMetadata and isinstance(c.offsets, torch.Size)
                        and isinstance(c.sizes, torch.Size) for c in entry.chunks)):
            raise refuse(f"entry {key!r} is malformed")
    storage = metadata.storage_data
    if not isinstance(storage, dict):
        raise refuse("its storage_data is not a dict")
    files = {name for name in listed if name.endswith(".distcp")}
    for index, info in storage.items():
        if type(index) is not MetadataIndex or type(info) is not _StorageInfo:
            raise refuse("its storage_data is malformed")
        if info.relative_path not in files:
            raise refuse(f"entry {index.fqn!r} lies in {info.relative_path!r}, which is not a .distcp file of this "
                         f"folder that the checkpoint's manifest lists")
        if (type(info.offset) is not int or type(info.length) is not int or info.offset < 0 or info.length < 0
                or info.transform_descriptors):
            raise refuse(f"entry {index.fqn!r} has a malformed location or stream transforms, which plait never writes")


def saved_shapes(metadata: Any) -> dict[str, tuple[int, ...]]:
    """The full (unsharded) shape of every tensor in checked ``metadata``."""
    return {key: tuple(entry.size) for key, entry in metadata.state_dict_metadata.items()}


class ListedFilesReader(FileSystemReader):
    """DCP's file reader for ``folder``, reading its metadata through :func:`read_metadata` (``listed``: the
    folder's file names the manifest lists) and never a bytes entry."""

    def __init__(self, folder: Path, listed: Collection[str]) -> None:
        super().__init__(str(folder))
        self.folder, self.listed = folder, frozenset(listed)

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        if kwargs.get("rank") is not None:
            raise CheckpointError(f"{self.folder} has no per-process DCP metadata: plait never writes it")
        metadata = read_metadata(self.folder, self.listed)
        if metadata.storage_meta is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id  # as DCP's own reader does
        return metadata

    def read_data(self, plan: Any, planner: Any) -> Any:
        if any(item.type == LoadItemType.BYTE_IO for item in plan.items):
            raise CheckpointError(f"{self.folder}: DCP was asked to unpickle a bytes entry, which plait never writes")
        return super().read_data(plan, planner)
