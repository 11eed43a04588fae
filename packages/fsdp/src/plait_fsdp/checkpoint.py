"""Model and optimizer state of sharded models: torch.distributed.checkpoint (DCP) directories by default,
consolidated safetensors as an option, and consolidated state dicts for export.

Layout inside a plait checkpoint (``index`` is the model's or optimizer's position):

* sharded (``state_dict_type: SHARDED_STATE_DICT``): ``pytorch_model_fsdp_<index>/`` and
  ``optimizer_<index>/`` are DCP directories (each process writes ``__<rank>_*.distcp``, the main
  process ``.metadata``); the optimizer's non-tensor state (param groups, integer steps) is in
  ``optimizer_<index>.pt``, loaded with ``weights_only=True``: DCP itself unpickles non-tensor
  values without restriction, so none are given to it.
* full (``FULL_STATE_DICT``): ``model.safetensors`` and ``optimizer.safetensors``/``optimizer.pt``
  as core writes them, keyed by parameter name, from the main process.

Loading looks at what the checkpoint holds, not at the current option, and reshards: a
checkpoint saved by N processes loads into any number. Imported from hook bodies only.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plait.checkpoint.default_state import model_file, read_optimizer_state, write_optimizer_state
from plait.checkpoint.tensor_files import check_shapes, load_safetensors, state_dict_to_safetensors
from plait.errors import CheckpointError
from plait_fsdp.wrapping import is_sharded


def model_dir(index: int) -> str:
    return f"pytorch_model_fsdp_{index}"


def optimizer_dir(index: int) -> str:
    return f"optimizer_{index}"


def _distributed(accelerator: Any) -> bool:
    return bool(accelerator.num_processes > 1)


def _options(full: bool, **extra: Any) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=full, cpu_offload=full, **extra)


def full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The consolidated state dict, on the main process (every process takes part; the others get ``{}``)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(True))


def _register_dcp_files(accelerator: Any, writer: Any, name: str) -> None:
    folder = writer.directory / name
    rank = accelerator.process_index
    for file in sorted(folder.glob(f"__{rank}_*")):
        writer.add(f"{name}/{file.name}")
    if accelerator.is_main_process:
        for file in sorted(p for p in folder.iterdir() if not p.name.startswith("__")):
            writer.add(f"{name}/{file.name}")


def _dcp_save(accelerator: Any, tensors: dict[str, torch.Tensor], writer: Any, name: str) -> None:
    from torch.distributed.checkpoint.state_dict_saver import save

    folder = writer.path(f"{name}/.metadata").parent
    with _quiet_single_process():
        save(tensors, checkpoint_id=str(folder), no_dist=not _distributed(accelerator))
    _register_dcp_files(accelerator, writer, name)


def dcp_load(state: dict[str, Any], folder: Path, distributed: bool) -> None:
    """Read ``folder`` into ``state``'s tensors in place (resharding to their layout)."""
    from torch.distributed.checkpoint.state_dict_loader import load

    with _quiet_single_process():
        load(state, checkpoint_id=str(folder), no_dist=not distributed)


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns that it "assumes" one process even when told so with no_dist=True.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _saved_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    metadata = FileSystemReader(str(folder)).read_metadata()
    return {key: tuple(entry.size) for key, entry in metadata.state_dict_metadata.items()
            if isinstance(entry, TensorStorageMetadata)}


def _check_shapes(target: dict[str, Any], saved: dict[str, tuple[int, ...]], source: str, strict: bool) -> None:
    """Raise before anything is read if ``saved`` does not fit ``target``, naming the first bad key."""
    check_shapes({key: tuple(tensor.shape) for key, tensor in target.items()}, saved, source, strict)


def save_model(accelerator: Any, model: nn.Module, writer: Any, index: int, sharded: bool) -> None:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    if not accelerator.sync_gradients:
        warnings.warn(
            "save_state in the middle of gradient accumulation: the fsdp backend does not save the gradients "
            "accumulated so far, so a resumed run restarts this accumulation window; save after the optimizer steps",
            stacklevel=4,
        )
    if sharded:
        state = {k: v for k, v in get_model_state_dict(model).items() if isinstance(v, torch.Tensor)}
        _dcp_save(accelerator, state, writer, model_dir(index))
        return
    state = full_state_dict(model) if is_sharded(model) else model.state_dict()
    if accelerator.is_main_process:
        tensors, metadata = state_dict_to_safetensors(state)
        writer.save_safetensors(model_file(index), tensors, metadata)


def load_model(accelerator: Any, model: nn.Module, directory: str, index: int, strict: bool) -> None:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    folder = Path(directory) / model_dir(index)
    target = get_model_state_dict(model)
    if folder.is_dir():
        saved = _saved_shapes(folder)
        _check_shapes(target, saved, f"sharded checkpoint {folder}", strict)
        state = {k: v for k, v in target.items() if k in saved}
        dcp_load(state, folder, _distributed(accelerator))
        set_model_state_dict(model, state, options=_options(False, strict=strict))
        return
    path = Path(directory) / model_file(index)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {directory} has neither {model_dir(index)}/ (sharded) nor {model_file(index)} (full) for "
            f"model {index}; nothing was loaded"
        )
    full: dict[str, Any] = load_safetensors(path)
    _check_shapes(target, {k: tuple(v.shape) for k, v in full.items()}, f"checkpoint file {path}", strict)
    set_model_state_dict(model, full, options=_options(True, strict=strict))


# ---------------------------------------------------------------------------- optimizers
def model_of(accelerator: Any, optimizer: Any) -> Any:
    """The prepared model whose parameters ``optimizer`` optimizes (its state is saved by parameter name)."""
    inner = getattr(optimizer, "optimizer", optimizer)
    mine = {id(p) for group in inner.param_groups for p in group["params"]}
    for model in accelerator.prepared.models:
        if any(id(p) in mine for p in model.parameters()):
            return model
    raise CheckpointError(
        f"the optimizer {type(inner).__name__} optimizes no parameter of a prepared model: the fsdp backend "
        f"saves optimizer state by parameter name, so prepare its model with the same accelerator"
    )


def _skeleton_name(index: int) -> str:
    return f"{optimizer_dir(index)}.pt"


def _split(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors under ``state/<fqn>/<name>`` keys, and the rest (param groups, numbers)."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {"state": {}, "param_groups": state.get("param_groups", [])}
    for fqn, entries in state.get("state", {}).items():
        rest["state"][fqn] = {}
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state/{fqn}/{name}"] = value
            else:
                rest["state"][fqn][name] = value
    return tensors, rest


def save_optimizer(accelerator: Any, model: nn.Module, optimizer: Any, writer: Any, index: int, sharded: bool) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    if sharded:
        tensors, rest = _split(get_optimizer_state_dict(model, inner))
        _dcp_save(accelerator, tensors, writer, optimizer_dir(index))
        if accelerator.is_main_process:
            writer.torch_save(_skeleton_name(index), rest)
        return
    state = get_optimizer_state_dict(model, inner, options=_options(is_sharded(model)))
    if accelerator.is_main_process:
        write_optimizer_state(writer, index, state)


def load_optimizer(accelerator: Any, model: nn.Module, optimizer: Any, directory: str, index: int) -> None:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    folder = Path(directory) / optimizer_dir(index)
    if folder.is_dir():
        rest = torch.load(Path(directory) / _skeleton_name(index), map_location="cpu", weights_only=True)
        current, _ = _split(get_optimizer_state_dict(model, inner))
        saved = _saved_shapes(folder)
        missing = [k.split("/", 1)[1] for k in saved if k not in current]
        if missing:
            raise CheckpointError(
                f"sharded optimizer checkpoint {folder} holds state {missing[0]!r} that this optimizer "
                f"{type(inner).__name__} does not have: load it into the kind of optimizer that saved it; "
                f"nothing was loaded"
            )
        _check_shapes({k: current[k] for k in saved}, saved, f"sharded optimizer checkpoint {folder}", False)
        tensors = {k: current[k] for k in saved}
        dcp_load(tensors, folder, _distributed(accelerator))
        for key, value in tensors.items():
            _, fqn, name = key.split("/", 2)
            rest["state"].setdefault(fqn, {})[name] = value
        set_optimizer_state_dict(model, inner, rest)
        return
    state = read_optimizer_state(directory, index)
    if any(not isinstance(k, str) for k in state.get("state", {})):
        # Written by a backend that keys optimizer state by position (single, ddp): the same parameters in order.
        inner.load_state_dict(state)
        return
    set_optimizer_state_dict(model, inner, state, options=_options(True))
