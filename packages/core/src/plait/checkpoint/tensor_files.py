"""State dicts to and from safetensors: shared (tied) tensors, tensors split from optimizer state, shape checks."""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from plait.errors import CheckpointError

ALIASES_KEY = "plait_aliases"
#: A safetensors header larger than this is not a header but a damaged or crafted file.
MAX_HEADER = 100 * 1024 * 1024
#: safetensors' dtype names, as torch names them (those this torch has).
_DTYPES = {
    name: getattr(torch, attribute)
    for name, attribute in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"), ("I64", "int64"),
        ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"), ("BOOL", "bool"),
        ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("C64", "complex64"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
    )
    if hasattr(torch, attribute)
}


def split_shared(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Separate tensors sharing storage (tied weights): safetensors stores each storage once.

    :return: the tensors to write (contiguous) and ``{alias: name kept}``.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], str] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"state dict entry {name!r} is a {type(tensor).__name__}: safetensors stores tensors only"
            )
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.dtype,
               tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
            continue
        seen[key] = name
        tensors[name] = tensor.detach().contiguous()
    return tensors, aliases


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                     ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _SAFETENSORS_DTYPES[getattr(torch, _name)] = _code


def write_safetensors(f: Any, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to the binary file ``f`` in the safetensors format, straight from their memory.

    The format is an 8-byte little-endian header length, a JSON header giving each
    tensor's dtype, shape and byte range, then the bytes. Writing from each tensor's
    own storage (no serialised copy in memory) keeps a checkpoint's peak memory at
    the model's. The result loads with ``safetensors.safe_open``.
    """
    import struct

    header: dict[str, Any] = {}
    offset = 0
    for name, tensor in tensors.items():
        code = _SAFETENSORS_DTYPES.get(tensor.dtype)
        if code is None:
            raise CheckpointError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
        nbytes = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": code, "shape": list(tensor.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = dict(metadata)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    f.write(struct.pack("<Q", len(encoded)) + encoded)
    for tensor in tensors.values():
        if tensor.numel():
            flat = tensor.detach().contiguous().reshape(-1).cpu()
            f.write(flat.view(torch.uint8).numpy().data)


_TENSOR_REF = "__plait_tensor__"


def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """A copy of ``obj`` with each tensor replaced by ``{_TENSOR_REF: key}``; the tensors go into ``tensors``.

    Used for optimizer state: the tensors are written as safetensors (fast, no
    pickle) and the small remaining structure with ``torch.save``.
    """
    if isinstance(obj, torch.Tensor):
        key = path or "value"
        tensors[key] = obj.detach().contiguous()
        return {_TENSOR_REF: key}
    if isinstance(obj, dict):
        return {k: split_tensors(v, tensors, f"{path}.{k}" if path else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [split_tensors(v, tensors, f"{path}.{i}" if path else str(i)) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def tensor_ref(obj: Any) -> str | None:
    """The key of the tensor :func:`split_tensors` put in place of ``obj``, or ``None`` when ``obj`` is not one."""
    if isinstance(obj, dict) and len(obj) == 1 and _TENSOR_REF in obj:
        return str(obj[_TENSOR_REF])
    return None


def join_tensors(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Undo :func:`split_tensors`; :class:`~plait.errors.CheckpointError` for a tensor ``tensors`` lacks."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR_REF}:
            if obj[_TENSOR_REF] not in tensors:
                raise CheckpointError(
                    f"optimizer state refers to tensor {obj[_TENSOR_REF]!r}, which its tensors file lacks: "
                    f"the two files are not of one checkpoint"
                )
            return tensors[obj[_TENSOR_REF]]
        return {k: join_tensors(v, tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [join_tensors(v, tensors) for v in obj]
        return items if isinstance(obj, list) else tuple(items)
    return obj


def state_dict_to_safetensors(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and safetensors metadata for ``state_dict`` (aliases recorded in the metadata)."""
    tensors, aliases = split_shared(state_dict)
    metadata = {"format": "pt"}
    if aliases:
        metadata[ALIASES_KEY] = json.dumps(aliases)
    return tensors, metadata


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict, shared tensors restored from the metadata."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    return _with_aliases(state, metadata)


def _with_aliases(state: dict[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, torch.Tensor]:
    for alias, name in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        if name in state:  # in a sharded export the tensor may live in another shard
            state[alias] = state[name]
    return state


def safetensors_header(start: bytes, read: Any, source: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's header and where its data begins, from its first 8 bytes ``start`` and
    ``read(size)``, which returns the header's bytes; a :class:`~plait.errors.CheckpointError` naming
    ``source`` for anything that is not a header."""
    size = struct.unpack("<Q", start)[0] if len(start) == 8 else -1
    if not 0 < size <= MAX_HEADER:
        raise CheckpointError(f"checkpoint file {source} is not a safetensors file (no header); nothing was loaded")
    try:
        header = json.loads(read(size))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"checkpoint file {source} has a malformed safetensors header ({exc}); nothing was loaded"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint file {source} has a malformed safetensors header; nothing was loaded")
    return header, 8 + size


def mapped_header(buffer: mmap.mmap, source: Path) -> tuple[dict[str, Any], int]:
    """:func:`safetensors_header` of a file mapped in memory."""
    return safetensors_header(buffer[:8], lambda size: buffer[8:8 + size], source)


def safetensors_from_buffer(buffer: mmap.mmap, source: Path) -> dict[str, torch.Tensor]:
    """A safetensors file mapped in memory as a state dict whose tensors are views of the mapping (no copy:
    the mapping is copy-on-write, so writing a tensor never writes the file). Tied tensors are restored;
    a header that does not describe the bytes is a :class:`~plait.errors.CheckpointError` naming ``source``.
    A dtype this parser does not know is read by safetensors itself."""
    header, base = mapped_header(buffer, source)
    state: dict[str, torch.Tensor] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = _DTYPES.get(entry["dtype"])
            if dtype is None:
                return load_safetensors(source)
            shape = [int(n) for n in entry["shape"]]
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"checkpoint file {source} has a malformed safetensors header at {key!r} ({type(exc).__name__}: "
                f"{exc}); nothing was loaded"
            ) from None
        itemsize = dtype.itemsize
        count = 1
        for n in shape:
            count *= n
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= len(buffer) - base or end - begin != count * itemsize:
            raise CheckpointError(
                f"checkpoint file {source}: tensor {key!r} of shape {shape} does not fit its bytes "
                f"{begin}..{end} of {len(buffer) - base}; nothing was loaded"
            )
        if count == 0:
            state[key] = torch.empty(shape, dtype=dtype)
        elif (base + begin) % itemsize:  # misaligned (not written by safetensors): a copy of its own
            state[key] = torch.frombuffer(bytearray(buffer[base + begin:base + end]), dtype=dtype).view(shape)
        else:
            state[key] = torch.frombuffer(buffer, dtype=dtype, count=count, offset=base + begin).view(shape)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise CheckpointError(f"checkpoint file {source} has a malformed safetensors header; nothing was loaded")
    return _with_aliases(state, metadata)


def check_compatible(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, strict: bool) -> None:
    """Raise, before anything is copied, if ``state`` does not fit ``model``, naming the first bad key."""
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    check_shapes(expected, {key: tuple(tensor.shape) for key, tensor in state.items()}, source, strict)


def check_shapes(
    expected: Mapping[str, tuple[int, ...]], saved: Mapping[str, tuple[int, ...]], source: str, strict: bool
) -> None:
    """Raise :class:`~plait.errors.CheckpointError` if the shapes ``saved`` in ``source`` do not fit the
    model's ``expected`` ones (full, unsharded shapes), naming the first bad key in the model's order;
    with ``strict``, missing and unexpected keys too. Backends call it before reading anything."""
    for key, shape in expected.items():
        if key in saved and tuple(saved[key]) != tuple(shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(saved[key])} but the model's is {tuple(shape)}; "
                f"nothing was loaded (build the model with the configuration that saved it)"
            )
    if strict:
        missing = [k for k in expected if k not in saved]
        unexpected = [k for k in saved if k not in expected]
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not match the model: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}; "
                f"nothing was loaded (pass strict=False to load what matches)"
            )
