"""Exporting model weights as HF-style safetensors files (``save_model``): one file, or shards with an index."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from plait.atomic_files import atomic_write
from plait.checkpoint.tensor_files import state_dict_to_safetensors

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_size(size: int | str) -> int:
    """Bytes in ``"10GB"`` (decimal), ``"5GiB"`` (binary) or an int."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size <= 0:
            raise ValueError(f"max_shard_size={size}: expected a positive number of bytes")
        return size
    match = _SIZE.match(str(size))
    if not match:
        raise ValueError(f"max_shard_size={size!r}: expected bytes as an int or a string like '10GB' or '500MiB'")
    value = float(match.group(1)) * _UNITS[(match.group(2) or "").upper()]
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r}: expected a positive size")
    return int(value)


def shard_state_dict(tensors: Mapping[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Split tensors, in order, into shards of at most ``max_bytes`` (a larger tensor gets a shard of its own)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def save_model_files(
    state_dict: Mapping[str, torch.Tensor], directory: Path, max_shard_size: int | str, safe_serialization: bool
) -> list[Path]:
    """Write a state dict as HF-style weights: one file, or shards with an index JSON. Returns the files written."""
    from safetensors.torch import save_file

    tensors, metadata = state_dict_to_safetensors(state_dict) if safe_serialization else (dict(state_dict), {})
    shards = shard_state_dict(tensors, parse_size(max_shard_size))
    base, index_name = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME) if safe_serialization else (WEIGHTS_NAME, WEIGHTS_INDEX_NAME)
    stem, suffix = base.rsplit(".", 1)
    directory.mkdir(parents=True, exist_ok=True)
    # Weights of an earlier export under another sharding would be mixed with ours: remove them
    # (an unsharded file too, which loaders would prefer to our index).
    for old in directory.glob(f"{stem}-*-of-*.{suffix}"):
        old.unlink()
    if len(shards) > 1 and (directory / base).exists():
        (directory / base).unlink()
    written = []
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards, start=1):
        name = base if len(shards) == 1 else f"{stem}-{i:05d}-of-{len(shards):05d}.{suffix}"
        path = directory / name
        if safe_serialization:
            atomic_write(path, lambda p, s=shard: save_file(s, str(p), metadata=metadata))
        else:
            atomic_write(path, lambda p, s=shard: torch.save(s, p))
        written.append(path)
        weight_map.update(dict.fromkeys(shard, name))
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        index_path = directory / index_name
        atomic_write(index_path, lambda p: p.write_text(json.dumps(index, indent=2, sort_keys=True), encoding="utf-8"))
        written.append(index_path)
    elif (directory / index_name).exists():
        (directory / index_name).unlink()
    return written
