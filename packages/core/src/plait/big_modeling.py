"""HF Accelerate's ``accelerate.big_modeling``: building models without memory (``init_empty_weights``) or on a
device (``init_on_device``), and loading weights into them (``load_checkpoint_in_model``).

plait does not implement big-model inference (a model split over devices, with weights offloaded to the
CPU or disk by hooks): ``dispatch_model`` and the rest can be imported, and using them raises
:class:`plait.errors.NotSupportedError` saying what is closest.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import nn

from plait.errors import not_supported
from plait.utils.constants import SAFE_WEIGHTS_NAME, WEIGHTS_NAME

_LARGER = "for models larger than one device use backend fsdp or zero, which shard them over the processes"


def _include_buffers(include_buffers: bool | None) -> bool:
    if include_buffers is None:
        from plait.utils.other import parse_flag_from_env

        return parse_flag_from_env("ACCELERATE_INIT_INCLUDE_BUFFERS", False)
    return bool(include_buffers)


@contextlib.contextmanager
def init_empty_weights(include_buffers: bool | None = None) -> Iterator[None]:
    """Build models with their parameters on the meta device: shapes and dtypes, no memory, no initialisation
    cost. Buffers too with ``include_buffers`` (default: ``ACCELERATE_INIT_INCLUDE_BUFFERS``, else no).

    Such a model holds no values: load them with :func:`load_checkpoint_in_model` (or
    ``model.load_state_dict(state, assign=True)``), or build it with ``accelerator.init_module()`` instead.
    """
    with init_on_device(torch.device("meta"), include_buffers=include_buffers):
        yield


@contextlib.contextmanager
def init_on_device(device: torch.device | str | int, include_buffers: bool | None = None) -> Iterator[None]:
    """Build models with their parameters on ``device``; buffers too with ``include_buffers`` (then every
    tensor made inside the block is made there)."""
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"init_on_device(device={device!r}): expected a torch.device or a device name such as "
                         f"'cpu', 'cuda:0' or 'meta'") from None
    if _include_buffers(include_buffers):
        with target:
            yield
        return
    original = nn.Module.register_parameter

    def register_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is None:
            return
        registered = module._parameters[name]
        if registered is None or registered.device == target:  # already there (tied weights stay one object)
            return
        extra = dict(registered.__dict__)
        hf_initialized = extra.pop("_is_hf_initialized", None)
        moved = registered.to(target)
        if type(registered) is nn.Parameter:
            replacement = nn.Parameter(moved, requires_grad=registered.requires_grad)
            replacement.__dict__.update(extra)
        else:  # parameter subclasses (bitsandbytes') take their attributes as arguments
            replacement = type(registered)(moved, **{**extra, "requires_grad": registered.requires_grad})
        if hf_initialized is not None:
            replacement._is_hf_initialized = hf_initialized  # type: ignore[attr-defined]
        module._parameters[name] = replacement

    setattr(nn.Module, "register_parameter", register_parameter)  # noqa: B010 (a method, for mypy)
    try:
        yield
    finally:
        setattr(nn.Module, "register_parameter", original)  # noqa: B010


# --------------------------------------------------------------------------- loading weights
def _checkpoint_files(checkpoint: str | os.PathLike[str]) -> tuple[list[Path], set[str] | None]:
    """The weight files of ``checkpoint`` and, for a sharded one, the keys its index lists."""
    path = Path(checkpoint)
    index: Path | None = None
    if path.is_file():
        if path.suffix != ".json":
            return [path], None
        index = path
    elif path.is_dir():
        for name in (WEIGHTS_NAME, SAFE_WEIGHTS_NAME):
            if (path / name).is_file():
                return [path / name], None
        indexes = sorted(p for p in path.iterdir() if p.name.endswith(".index.json"))
        if len(indexes) != 1:
            found = f"{len(indexes)} .index.json files ({', '.join(p.name for p in indexes)})" if indexes else "none"
            raise ValueError(
                f"load_checkpoint_in_model: folder {path} holds no {WEIGHTS_NAME} or {SAFE_WEIGHTS_NAME} and {found}: "
                f"expected one of them, or exactly one index of a sharded checkpoint (delete the others)"
            )
        index = indexes[0]
    else:
        raise ValueError(
            f"load_checkpoint_in_model: checkpoint {path} does not exist: expected a weights file (.safetensors, "
            f".bin), the .index.json of a sharded checkpoint, or a folder holding either"
        )
    data = json.loads(index.read_text(encoding="utf-8"))
    weight_map = data.get("weight_map", data) if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"load_checkpoint_in_model: {index} is not an index of a sharded checkpoint: expected "
                         f"a JSON object with a 'weight_map' of tensor names to file names")
    files = [index.parent / name for name in sorted(set(map(str, weight_map.values())))]
    return files, set(map(str, weight_map))


def _read(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise ValueError(f"load_checkpoint_in_model: weights file {file} does not exist (named by the index of "
                         f"its sharded checkpoint); the checkpoint is incomplete")
    if file.suffix == ".safetensors":
        from plait.checkpoint.tensor_files import load_safetensors

        return load_safetensors(file)
    state = torch.load(file, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"load_checkpoint_in_model: {file} holds a {type(state).__name__}, expected a state dict")
    return dict(state)


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype: expected e.g. torch.float16 or 'bfloat16'")
    return value


def _device_of(key: str, device_map: Mapping[str, Any]) -> torch.device:
    module = key
    while module and module not in device_map:
        module = module.rpartition(".")[0]
    if module not in device_map:
        raise ValueError(f"load_checkpoint_in_model: device_map gives no device for {key!r} (nor for a module "
                         f"holding it); add it, or '' for the whole model")
    device = device_map[module]
    if device == "disk":
        raise not_supported("device_map value 'disk'", "plait does not offload weights to disk; " + _LARGER)
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def _tied_groups(model: nn.Module) -> list[list[str]]:
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group for group in names.values() if len(group) > 1]


def _current(model: nn.Module, key: str, value: torch.Tensor) -> tuple[nn.Module, str, torch.Tensor]:
    """The module holding ``key``, the tensor's name in it and the tensor, after checking ``value``'s shape."""
    owner, _, name = key.rpartition(".")
    module = model.get_submodule(owner)
    old = module._parameters[name] if name in module._parameters else module._buffers[name]
    if old is None or tuple(value.shape) != tuple(old.shape):
        raise ValueError(f"load_checkpoint_in_model: {key!r} has shape {tuple(value.shape)} in the checkpoint but "
                         f"{None if old is None else tuple(old.shape)} in the model; nothing of its file was loaded "
                         f"(build the model with the configuration that saved it)")
    return module, name, old


def _set(model: nn.Module, key: str, value: torch.Tensor, device: torch.device | None, dtype: torch.dtype | None) -> None:
    """Put ``value`` in ``model`` under ``key``: copied into the existing tensor when it has memory on
    ``device`` (optimizers and tied weights keep it), else as a new tensor there."""
    module, name, old = _current(model, key, value)
    if value.is_floating_point():
        value = value.to(dtype or old.dtype)
    where = device if device is not None else (old.device if old.device.type != "meta" else torch.device("cpu"))
    if old.device == where and old.dtype == value.dtype:
        with torch.no_grad():
            old.copy_(value)
        return
    new = value.to(where)
    if name in module._parameters:
        parameter_class: Any = type(old)
        module._parameters[name] = parameter_class(new, requires_grad=old.requires_grad)
    else:
        module._buffers[name] = new


def load_checkpoint_in_model(
    model: nn.Module,
    checkpoint: str | os.PathLike[str],
    device_map: Mapping[str, int | str | torch.device] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    dtype: str | torch.dtype | None = None,
    offload_state_dict: bool = False,
    offload_buffers: bool = False,
    keep_in_fp32_modules: list[str] | None = None,
    offload_8bit_bnb: bool = False,
    strict: bool = False,
    full_state_dict: bool = True,
    broadcast_from_rank0: bool = False,
) -> None:
    """Load weights into ``model``, also one built with :func:`init_empty_weights`.

    :param checkpoint: a weights file (safetensors or ``torch.save``), the ``.index.json`` of a sharded
        checkpoint, or a folder holding ``pytorch_model.bin``, ``model.safetensors`` or one index.
    :param device_map: module name (``""`` for all) -> the device its tensors go to; by default each
        tensor stays on its device, and one on the meta device goes to the CPU.
    :param dtype: the floating-point dtype to load weights as (default: the model's), except in the
        modules named by ``keep_in_fp32_modules`` when it is float16.
    :param strict: raise, before loading anything, if the checkpoint's keys are not exactly the model's.
    """
    for flag, used in (("offload_state_dict", offload_state_dict), ("offload_8bit_bnb", offload_8bit_bnb),
                       ("broadcast_from_rank0", broadcast_from_rank0), ("full_state_dict=False", not full_state_dict)):
        if used:
            raise not_supported(f"load_checkpoint_in_model({flag})",
                                "load the full weights on each process, before prepare; " + _LARGER)
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        raise not_supported("load_checkpoint_in_model on a sharded (fsdp) model",
                            "load the weights before accelerator.prepare, or resume with accelerator.load_state")
    target_dtype = _dtype(dtype)
    files, indexed = _checkpoint_files(checkpoint)
    model_keys = dict.fromkeys(model.state_dict())  # (in the model's order, for messages)
    first = _read(files[0]) if indexed is None else None
    keys = indexed if indexed is not None else set(first or {})
    missing, unexpected = [k for k in model_keys if k not in keys], sorted(keys - model_keys.keys())
    if strict and (missing or unexpected):
        raise ValueError(f"load_checkpoint_in_model: checkpoint {checkpoint} does not match the model: missing keys "
                         f"{missing[:5]}, unexpected keys {unexpected[:5]}; nothing was loaded (strict=False loads "
                         f"what matches)")
    devices = {key: _device_of(key, device_map) for key in model_keys} if device_map is not None else {}
    tied = _tied_groups(model)
    for file in files:
        state = first if first is not None else _read(file)
        first = None
        for key, value in state.items():  # every shape is checked before this file changes the model
            if key in model_keys:
                _current(model, key, value)
        for key, value in state.items():
            if key not in model_keys:
                continue
            kept = target_dtype
            if target_dtype == torch.float16 and keep_in_fp32_modules and any(
                    (m in key and f"{m}." in key) or m == key for m in keep_in_fp32_modules):
                kept = torch.float32
            _set(model, key, value, devices.get(key), kept)
        del state
    for group in tied:  # a new tensor replaced one name of tied weights: give it to the other names
        loaded = next((n for n in group if n in keys), group[0])
        param = model.get_parameter(loaded)
        for name in group:
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._parameters[attr] = param
    if unexpected:
        warnings.warn(f"load_checkpoint_in_model: weights of {checkpoint} not used by {type(model).__name__}: "
                      f"{unexpected[:10]}", stacklevel=2)
    left = [k for k, t in model.state_dict().items() if t.device.type == "meta"]
    if left:
        warnings.warn(f"load_checkpoint_in_model: {checkpoint} has no value for {left[:10]}, which stay on the meta "
                      f"device without values", stacklevel=2)


# --------------------------------------------------------------------------- not supported
def _unsupported(name: str, alternative: str) -> Any:
    def function(*args: Any, **kwargs: Any) -> NoReturn:
        raise not_supported(name, alternative)

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"Not supported by plait (HF Accelerate's big-model inference): {alternative}."
    return function


_LOAD = "load the weights with load_checkpoint_in_model and move the model with .to(device); " + _LARGER
dispatch_model = _unsupported("dispatch_model", "move the model with model.to(device); " + _LARGER)
load_checkpoint_and_dispatch = _unsupported("load_checkpoint_and_dispatch", _LOAD)
infer_auto_device_map = _unsupported(
    "infer_auto_device_map", "plait puts the whole model on each process's device; " + _LARGER)
_OFFLOAD = ("plait does not run models offloaded by hooks; to train with parameters in CPU memory use backend "
            "fsdp with offload_params: true, or zero with offload_param_device: cpu")
cpu_offload = _unsupported("cpu_offload", _OFFLOAD)
cpu_offload_with_hook = _unsupported("cpu_offload_with_hook", _OFFLOAD)
disk_offload = _unsupported("disk_offload", _OFFLOAD)
_MEMORY = "plait does not split models over devices (torch.cuda.mem_get_info() gives a device's free memory); " + _LARGER
get_balanced_memory = _unsupported("get_balanced_memory", _MEMORY)
get_max_memory = _unsupported("get_max_memory", _MEMORY)
