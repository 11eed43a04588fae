"""HF Accelerate's general utilities (``accelerate.utils.other``, ``.environment``, ``.fsdp_utils``): unwrapping
models, saving and loading, the environment, a basic config file, and merging sharded FSDP weights."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from plait.errors import CheckpointError, not_supported
from plait.utils.constants import FSDP_MODEL_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME

_TRUE = ("y", "yes", "t", "true", "on", "1")
_FALSE = ("n", "no", "f", "false", "off", "0")


# --------------------------------------------------------------------------- models
def is_compiled_module(module: Any) -> bool:
    """Whether ``module`` is what ``torch.compile(module)`` returned (an ``OptimizedModule``)."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # never imported: nothing was compiled
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


def _is_wrapper(model: Any) -> bool:
    """DDP, DataParallel, FSDP (version 1) and DeepSpeed's engines: containers holding the model as ``.module``.
    FSDP2 (``fully_shard``) changes the module itself and is not a container."""
    if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return True
    fsdp1 = sys.modules.get("torch.distributed.fsdp.fully_sharded_data_parallel")
    if fsdp1 is not None and isinstance(model, fsdp1.FullyShardedDataParallel):
        return True
    # DeepSpeed's engines, recognised without importing deepspeed.
    return any(c.__name__ == "DeepSpeedEngine" and c.__module__.startswith("deepspeed") for c in type(model).__mro__)


def extract_model_from_parallel(
    model: Any, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True, recursive: bool = False
) -> Any:
    """The user's module inside ``model``: without its DDP, DataParallel, FSDP (version 1) or DeepSpeed
    container. A ``torch.compile`` wrapper is kept (around the unwrapped module) unless ``keep_torch_compile``
    is false; the mixed-precision ``forward`` that ``prepare`` installed is removed when ``keep_fp32_wrapper``
    is false. With ``recursive``, containers inside child modules are removed too."""
    from plait.training.forward_patch import unpatch_forward

    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"extract_model_from_parallel({type(model).__name__}): expected a torch.nn.Module (the prepared model)"
        )
    compiled = model if is_compiled_module(model) else None
    if compiled is not None:
        model = compiled._orig_mod
    while _is_wrapper(model):
        if not keep_fp32_wrapper:
            unpatch_forward(model)
        model = model.module
    if recursive:
        model = _unwrap_children(model)
    if not keep_fp32_wrapper:
        unpatch_forward(model)
        if compiled is not None:
            unpatch_forward(compiled)
    if compiled is not None and keep_torch_compile:
        compiled._orig_mod = model
        return compiled
    return model


def _unwrap_children(module: Any) -> Any:
    while _is_wrapper(module):
        module = module.module
    for name, child in list(module.named_children()):
        setattr(module, name, _unwrap_children(child))
    return module


def get_pretty_name(obj: Any) -> str:
    """``obj``'s qualified name, or its class's for an instance."""
    if not hasattr(obj, "__qualname__") and not hasattr(obj, "__name__"):
        obj = getattr(obj, "__class__", obj)
    if hasattr(obj, "__qualname__"):
        return str(obj.__qualname__)
    if hasattr(obj, "__name__"):
        return str(obj.__name__)
    return str(obj)


# --------------------------------------------------------------------------- saving and loading
def save(obj: Any, f: Any, save_on_each_node: bool = False, safe_serialization: bool = False) -> None:
    """``torch.save(obj, f)`` on the main process only (with ``save_on_each_node``, on each machine's local
    main process); with ``safe_serialization``, ``obj`` is a state dict written as safetensors (tensors sharing
    memory are stored once)."""
    from plait.state import PartialState

    state = PartialState()
    if not (state.is_local_main_process if save_on_each_node else state.is_main_process):
        return
    if not safe_serialization:
        torch.save(obj, f)
        return
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TypeError(
            f"save(..., safe_serialization=True) got a {type(obj).__name__}: safetensors stores a dict of tensors "
            f"(a state dict); pass safe_serialization=False to save other objects with torch.save"
        )
    from plait.checkpoint.tensor_files import state_dict_to_safetensors, write_safetensors

    tensors, metadata = state_dict_to_safetensors(obj)
    if hasattr(f, "write"):
        write_safetensors(f, tensors, metadata)
    else:
        from safetensors.torch import save_file

        save_file(tensors, os.fspath(f), metadata=metadata)


def _numpy_globals() -> list[Any]:
    """What pickled numpy arrays (RNG states) need under ``weights_only=True``: numbers, not code."""
    import codecs

    import numpy as np

    core = np._core if hasattr(np, "_core") else np.core
    found: list[Any] = [core.multiarray._reconstruct, np.ndarray, np.dtype, codecs.encode]
    if hasattr(np, "dtypes"):
        found += [type(np.dtype(name)) for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                                    "uint32", "uint64", "float16", "float32", "float64")]
    return found


def load(f: Any, map_location: Any = None, **kwargs: Any) -> Any:
    """``torch.load(f, map_location, weights_only=True, **kwargs)``: tensors, containers and numpy arrays, never
    arbitrary pickled objects (pass ``weights_only=False`` only for files you trust)."""
    kwargs.setdefault("weights_only", True)
    if not kwargs["weights_only"]:
        return torch.load(f, map_location=map_location, **kwargs)
    serialization = torch.serialization
    if hasattr(serialization, "safe_globals"):  # torch 2.5: a context that restores the allowlist
        with serialization.safe_globals(_numpy_globals()):
            return torch.load(f, map_location=map_location, **kwargs)
    before = serialization.get_safe_globals()
    serialization.add_safe_globals(_numpy_globals())
    try:
        return torch.load(f, map_location=map_location, **kwargs)
    finally:
        serialization.clear_safe_globals()
        if before:
            serialization.add_safe_globals(before)


def merge_dicts(source: Mapping[Any, Any], destination: dict[Any, Any]) -> dict[Any, Any]:
    """Merge ``source`` into ``destination`` recursively (nested dicts merged, other values replaced)."""
    for key, value in source.items():
        if isinstance(value, Mapping):
            node = destination.setdefault(key, {})
            merge_dicts(value, node)
        else:
            destination[key] = value
    return destination


# --------------------------------------------------------------------------- config file
def write_basic_config(mixed_precision: str = "no", save_location: str | os.PathLike[str] | None = None) -> Path | bool:
    """Write the config ``plait config default`` writes (every GPU with ddp, else one process) to
    ``save_location``, by default plait's config file ($XDG_CONFIG_HOME/plait/default_config.yaml).

    :return: the path written, or ``False`` (as HF Accelerate) when a file is already there.
    """
    from plait.config import MIXED_PRECISION_CHOICES, Config, default_config_path
    from plait.config.yaml_files import write_config_file
    from plait.plugins import installed_backends
    from plait.plugins.catalog import BUILTIN_BACKEND, MULTI_PROCESS_BACKEND

    path = Path(save_location) if save_location is not None else default_config_path()
    if path.exists():
        print(f"Configuration already exists at {path}, will not override it: run `plait config` or pass another "
              f"save_location")
        return False
    precision = str(mixed_precision).lower()
    if precision == "fp8":
        raise not_supported("mixed_precision='fp8'", "plait has no FP8 training; use mixed_precision='bf16'")
    if precision not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"mixed_precision={mixed_precision!r} is not valid: expected one of "
                         f"{', '.join(map(repr, MIXED_PRECISION_CHOICES))}")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus > 1 and MULTI_PROCESS_BACKEND in installed_backends():
        values: dict[str, Any] = {"backend": MULTI_PROCESS_BACKEND, "num_processes": gpus}
    else:
        values = {"backend": BUILTIN_BACKEND, "num_processes": 1, "cpu": gpus == 0}
    data = Config(**values, mixed_precision=precision).to_dict()
    write_config_file(path, data, "# plait config, written by plait.utils.write_basic_config.\n")
    return path


# --------------------------------------------------------------------------- environment
@contextlib.contextmanager
def patch_environment(**kwargs: Any) -> Iterator[None]:
    """Set each keyword as an environment variable (upper-cased name, ``str(value)``) inside the block; the
    previous values (or their absence) come back after it."""
    names = {key: key.upper() for key in kwargs}
    if len(set(names.values())) != len(names):
        clash = sorted(key for key in names if list(names.values()).count(names[key]) > 1)
        raise ValueError(f"patch_environment({', '.join(clash)}=...): these names are the same variable once "
                         f"upper-cased; pass each variable once")
    previous = {name: os.environ.get(name) for name in names.values()}
    try:
        for key, value in kwargs.items():
            os.environ[names[key]] = str(value)
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def clear_environment() -> Iterator[None]:
    """Run the block with no environment variable set; the whole environment comes back after it."""
    saved = os.environ.copy()
    os.environ.clear()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def str_to_bool(value: str, to_bool: bool = False) -> int | bool:
    """1 for ``y, yes, t, true, on, 1``, 0 for ``n, no, f, false, off, 0`` (any case); ``True``/``False``
    with ``to_bool``."""
    text = str(value).strip().lower()
    if text in _TRUE:
        return True if to_bool else 1
    if text in _FALSE:
        return False if to_bool else 0
    raise ValueError(f"invalid truth value {value!r}: expected one of {', '.join(_TRUE)} or {', '.join(_FALSE)}")


def get_int_from_env(env_keys: Iterable[str], default: int) -> int:
    """The first of the variables ``env_keys`` set to a number of at least 0, else ``default``."""
    for key in env_keys:
        text = os.environ.get(key, "-1")
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"environment variable {key}={text!r} is not valid: expected a whole number") from None
        if value >= 0:
            return value
    return default


def parse_flag_from_env(key: str, default: bool = False) -> bool:
    """Whether the variable ``key`` is set to a true value (see :func:`str_to_bool`), else ``default``."""
    value = os.environ.get(key, str(default))
    try:
        return str_to_bool(value) == 1
    except ValueError:
        raise ValueError(f"environment variable {key}={value!r} is not valid: expected one of "
                         f"{', '.join(_TRUE)} or {', '.join(_FALSE)}") from None


def parse_choice_from_env(key: str, default: str = "no") -> str:
    """The variable ``key``, else ``default``."""
    return os.environ.get(key, str(default))


def convert_bytes(size: float) -> str:
    """``size`` bytes in the largest unit below 1024 of it (``"1.5 KB"``)."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if size < 1024.0:
            return f"{round(size, 2)} {unit}"
        size /= 1024.0
    return f"{round(size, 2)} PB"


def is_port_in_use(port: int | None = None) -> bool:
    """Whether something listens on ``port`` (default 29500, torch.distributed's) on localhost."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        return s.connect_ex(("localhost", 29500 if port is None else port)) == 0


# --------------------------------------------------------------------------- sharded FSDP weights
def find_sharded_weights(checkpoint_dir: str | os.PathLike[str], index: int = 0) -> Path:
    """Where the weights of model ``index`` of a checkpoint are: its torch.distributed.checkpoint folder, or
    the weights file of a plait checkpoint saved with ``FULL_STATE_DICT``. A plait checkpoint (manifest) is
    verified first; a DCP folder (``.metadata``) is taken as it is."""
    from plait.checkpoint.default_state import model_file
    from plait.checkpoint.writer import MANIFEST

    source = Path(checkpoint_dir)
    folder = source / f"{FSDP_MODEL_NAME}_{index}"
    if (source / MANIFEST).is_file():
        from plait.checkpoint.directory import verify

        verify(source)
        if not folder.is_dir() and (source / model_file(index)).is_file():
            return source / model_file(index)  # saved with FULL_STATE_DICT: already one file
    if folder.is_dir():  # a plait checkpoint, or HF Accelerate's save_state directory
        source = folder
    if not (source / ".metadata").is_file():
        raise CheckpointError(
            f"{checkpoint_dir} is not a sharded checkpoint: expected a plait checkpoint holding {folder.name}/ or a "
            f"torch.distributed.checkpoint directory with a .metadata file; pass the directory save_state wrote"
        )
    return source


def consolidate_weights(source: Path, listed: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a torch.distributed.checkpoint folder, whole and on the CPU, read by this process alone
    (or a safetensors file's tensors), through the restricted reader (:mod:`plait.checkpoint.dcp_reader`: a
    crafted ``.metadata`` runs nothing; ``listed``: the folder's file names a manifest lists, all of them when
    ``None``). HF Accelerate's ``{"model": state_dict}`` comes back under the model's own names."""
    from plait.checkpoint.tensor_files import load_safetensors

    if source.is_file():
        return load_safetensors(source)
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    from plait.checkpoint.dcp_reader import ListedFilesReader, read_metadata

    names = listed if listed is not None else [p.name for p in source.iterdir() if p.is_file()]
    metadata = read_metadata(source, names)
    state = {key: torch.empty(entry.size, dtype=entry.properties.dtype)  # tensors only: read_metadata checked
             for key, entry in metadata.state_dict_metadata.items() if isinstance(entry, TensorStorageMetadata)}
    with warnings.catch_warnings():  # DCP warns that it "assumes" one process even when told so
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        dcp_load(state, storage_reader=ListedFilesReader(source, names), no_dist=True)
    paths: dict[str, Any] = metadata.planner_data if isinstance(metadata.planner_data, dict) else {}
    pairs: list[Any] = [paths.get(key) for key in state]
    if state and all(isinstance(p, tuple) and len(p) == 2 for p in pairs) and len({p[0] for p in pairs}) == 1:
        return {str(path[1]): tensor for path, tensor in zip(pairs, state.values())}
    return state


def write_weights(state: Mapping[str, torch.Tensor], target: Path, safe_serialization: bool = True) -> Path:
    """Write a state dict as one file, atomically: safetensors, or ``torch.save`` without ``safe_serialization``."""
    from plait.atomic_files import atomic_write

    target.parent.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        from safetensors.torch import save_file

        from plait.checkpoint.tensor_files import state_dict_to_safetensors

        tensors, metadata = state_dict_to_safetensors(state)
        atomic_write(target, lambda path: save_file(tensors, str(path), metadata=metadata))
    else:
        atomic_write(target, lambda path: torch.save(dict(state), path))
    return target


def merge_fsdp_weights(
    checkpoint_dir: str | os.PathLike[str], output_path: str | os.PathLike[str], safe_serialization: bool = True,
    remove_checkpoint_dir: bool = False,
) -> Path:
    """Merge the weights of a sharded FSDP checkpoint (``SHARDED_STATE_DICT``) into one file,
    ``output_path/model.safetensors`` (``pytorch_model.bin`` without ``safe_serialization``), on the main
    process; then remove ``checkpoint_dir`` if ``remove_checkpoint_dir``. Needs the whole model in CPU memory.

    :param checkpoint_dir: a plait checkpoint (verified first), the folder of HF Accelerate's ``save_state``,
        or a torch.distributed.checkpoint folder (``pytorch_model_fsdp_0``).
    :return: the file written.
    """
    source_dir = Path(checkpoint_dir)
    target = Path(output_path) / (SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME)
    if remove_checkpoint_dir and target.resolve().is_relative_to(source_dir.resolve()):
        raise ValueError(
            f"merge_fsdp_weights: output_path {output_path} is inside checkpoint_dir {checkpoint_dir}, which "
            f"remove_checkpoint_dir=True would delete with the merged file; write it elsewhere"
        )
    from plait.state import PartialState

    state = PartialState()
    try:
        if state.is_main_process:
            write_weights(consolidate_weights(find_sharded_weights(source_dir)), target, safe_serialization)
            if remove_checkpoint_dir:
                shutil.rmtree(source_dir)
    finally:
        state.wait_for_everyone()  # (also when the main process failed: the others do not wait forever)
    return target
