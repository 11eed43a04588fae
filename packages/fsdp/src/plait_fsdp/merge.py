"""``plait fsdp merge-weights``: a sharded checkpoint's model weights as one safetensors file, in one process.

Finding the weights and writing the file are core's (:mod:`plait.utils.other`, whose ``merge_fsdp_weights``
is HF Accelerate's function); reading them is this package's :mod:`plait_fsdp.dcp_reader`, so that a crafted
``.metadata`` runs nothing: inside a plait checkpoint only the files its manifest lists are read, in a bare
DCP directory the files beside ``.metadata``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch


def read_weights(source: Path, listed: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of DCP folder ``source``, whole and on the CPU, read by this process alone through the
    restricted reader (``listed``: the folder's file names a manifest lists; all of them when ``None``).
    HF Accelerate's ``{"model": state_dict}`` comes back under the model's own names."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load

    from plait_fsdp.dcp_reader import ListedFilesReader, read_metadata

    names = listed if listed is not None else [p.name for p in source.iterdir() if p.is_file()]
    metadata = read_metadata(source, names)
    state = {key: torch.empty(entry.size, dtype=entry.properties.dtype)  # tensors only: read_metadata checked
             for key, entry in metadata.state_dict_metadata.items() if isinstance(entry, TensorStorageMetadata)}
    with warnings.catch_warnings():  # DCP warns that it "assumes" one process even when told so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        load(state, storage_reader=ListedFilesReader(source, names), no_dist=True)
    paths = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    pairs: list[Any] = [paths.get(key) for key in state]
    if state and all(isinstance(p, tuple) and len(p) == 2 for p in pairs) and len({p[0] for p in pairs}) == 1:
        return {str(path[1]): tensor for path, tensor in zip(pairs, state.values())}
    return state


def merge_weights(checkpoint_dir: str | os.PathLike[str], output: str | os.PathLike[str], index: int = 0) -> Path:
    """Consolidate the weights of model ``index`` of a checkpoint into one safetensors file.

    :param checkpoint_dir: a plait checkpoint (its manifest and checksums are verified first) or a
        torch.distributed.checkpoint directory of model weights.
    :param output: the file to write (``*.safetensors``), or a directory to write ``model.safetensors`` in.
    :return: the file written.
    """
    from plait.checkpoint import MANIFEST
    from plait.checkpoint.tensor_files import load_safetensors
    from plait.utils.other import find_sharded_weights, write_weights

    target = Path(output)
    if target.suffix != ".safetensors":
        target = target / "model.safetensors"
    source = find_sharded_weights(checkpoint_dir, index)  # verifies a plait checkpoint's manifest and checksums
    if source.is_file():
        return write_weights(load_safetensors(source), target, safe_serialization=True)
    listed = None  # a DCP directory given as it is: the files beside its .metadata
    if Path(checkpoint_dir).resolve() != source.resolve() and (source.parent / MANIFEST).is_file():
        # inside a plait checkpoint, verified just now
        files = json.loads((source.parent / MANIFEST).read_text(encoding="utf-8"))["files"]
        listed = [name.split("/", 1)[1] for name in files if name.startswith(f"{source.name}/")]
    return write_weights(read_weights(source, listed), target, safe_serialization=True)
