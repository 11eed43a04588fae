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
checkpoint saved by N processes loads into any number. It is all or nothing: :func:`check_model` and
:func:`check_optimizer` refuse, from DCP's metadata, the safetensors headers and the small ``.pt`` files
(read once: the load takes those reads), what does not fit, before anything changes; DCP folders are read
only through :mod:`plait.checkpoint.dcp_reader` (no pickle but DCP's metadata classes, only listed files).
Imported from hook bodies only.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from plait.checkpoint.dcp_reader import ListedFilesReader, read_metadata, saved_shapes
from plait.checkpoint.default_state import (
    check_class,
    check_optimizer_state,
    model_file,
    optimizer_files,
    read_optimizer_state,
    write_optimizer_state,
)
from plait.checkpoint.tensor_files import check_shapes, state_dict_to_safetensors
from plait.errors import CheckpointError
from plait_fsdp.wrapping import is_sharded

if TYPE_CHECKING:
    from plait.checkpoint import CheckpointReader


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


def dcp_load(state: dict[str, Any], checkpoint: CheckpointReader, name: str, distributed: bool) -> None:
    """Read DCP folder ``name`` of ``checkpoint`` into ``state``'s tensors in place (resharding to their
    layout), through the restricted reader: only what the manifest lists, no pickle but tensors."""
    from torch.distributed.checkpoint.state_dict_loader import load

    reader = ListedFilesReader(checkpoint.directory / name, _listed(checkpoint, name))
    try:
        with _quiet_single_process():
            load(state, storage_reader=reader, no_dist=not distributed)
    except CheckpointError:
        raise
    except Exception as exc:  # after the checks passed: an unreadable shard (DCP gathers every process's errors)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"reading DCP folder {checkpoint.directory / name} failed ({type(exc).__name__}: {reason}); what was "
            f"read before it may be in memory: load a complete checkpoint again before training"
        ) from exc


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    # DCP warns that it "assumes" one process even when told so with no_dist=True.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _listed(checkpoint: CheckpointReader, name: str) -> list[str]:
    """The names of DCP folder ``name``'s files that the manifest lists."""
    return [listed.split("/", 1)[1] for listed in checkpoint.names(f"{name}/")]


def is_dcp(checkpoint: CheckpointReader, name: str) -> bool:
    """Whether the checkpoint holds DCP folder ``name`` (a sharded save)."""
    return bool(checkpoint.names(f"{name}/"))


def dcp_metadata(checkpoint: CheckpointReader, name: str) -> Any:
    """The checked metadata of DCP folder ``name`` (a crafted ``.metadata`` is refused, never run)."""
    return read_metadata(checkpoint.directory / name, _listed(checkpoint, name))


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


def check_model(model: nn.Module, checkpoint: CheckpointReader, index: int, strict: bool) -> None:
    """Refuse, from DCP's metadata or the safetensors header (no tensor is read), a saved model that does not
    fit ``model``: every key's full shape, and with ``strict`` the key sets. Changes nothing."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    target = {key: tuple(tensor.shape) for key, tensor in get_model_state_dict(model).items()
              if isinstance(tensor, torch.Tensor)}
    folder = model_dir(index)
    if is_dcp(checkpoint, folder):
        saved = saved_shapes(dcp_metadata(checkpoint, folder))
        check_shapes(target, saved, f"sharded checkpoint {checkpoint.directory / folder}", strict)
        return
    name = model_file(index)
    if not checkpoint.has(name):
        raise CheckpointError(
            f"checkpoint {checkpoint.directory} has neither {folder}/ (sharded) nor {name} (full) for model {index}; "
            f"nothing was loaded (load a checkpoint saved by save_state for the same models)"
        )
    check_shapes(target, checkpoint.safetensors_shapes(name), f"checkpoint file {checkpoint.path(name)}", strict)


def load_model(accelerator: Any, model: nn.Module, checkpoint: CheckpointReader, index: int, strict: bool) -> None:
    """Load what :func:`save_model` wrote (checked by :func:`check_model`)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    folder = model_dir(index)
    if is_dcp(checkpoint, folder):
        saved = saved_shapes(dcp_metadata(checkpoint, folder))
        state = {k: v for k, v in get_model_state_dict(model).items() if k in saved}
        dcp_load(state, checkpoint, folder, _distributed(accelerator))
        set_model_state_dict(model, state, options=_options(False, strict=strict))
        return
    full: dict[str, Any] = checkpoint.load_safetensors(model_file(index))
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


def _group_names(model: nn.Module, inner: Any) -> list[list[str]]:
    """The parameter names of each of ``inner``'s groups, as its state dict names them (without changing it)."""
    names = {id(p): name for name, p in getattr(model, "_orig_mod", model).named_parameters()}
    return [[names.get(id(p), "?") for p in group["params"]] for group in inner.param_groups]


def _saved_optimizer(checkpoint: CheckpointReader, index: int) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """The saved optimizer state dict with its tensors as meta tensors of their shapes, and those shapes by key."""
    folder = optimizer_dir(index)
    if is_dcp(checkpoint, folder):
        rest = checkpoint.torch_load(_skeleton_name(index))  # read once: the load takes this read
        shapes = saved_shapes(dcp_metadata(checkpoint, folder))
        if not (isinstance(rest, dict) and isinstance(rest.get("state"), dict)):
            raise CheckpointError(f"checkpoint file {checkpoint.path(_skeleton_name(index))} is not the optimizer "
                                  f"state save_state writes; nothing was loaded")
        state: dict[Any, Any] = {fqn: dict(entries) if isinstance(entries, dict) else entries
                                 for fqn, entries in rest["state"].items()}
        for key, shape in shapes.items():
            kind, _, tail = key.partition("/")
            fqn, _, name = tail.rpartition("/")
            if kind != "state" or not fqn:
                raise CheckpointError(f"sharded optimizer checkpoint {checkpoint.directory / folder} holds {key!r}, "
                                      f"which is not optimizer state; nothing was loaded")
            state.setdefault(fqn, {})[name] = torch.empty(shape, device="meta")
        return {**rest, "state": state}, shapes
    tensors_file, rest_file = optimizer_files(index)
    return checkpoint.torch_load(rest_file), checkpoint.safetensors_shapes(tensors_file)


def check_optimizer(accelerator: Any, optimizer: Any, checkpoint: CheckpointReader, index: int) -> None:
    """Refuse, before anything is loaded, a saved optimizer state that does not fit ``optimizer``: another
    class, other parameter groups or parameter names, state of other shapes. Changes nothing."""
    inner = getattr(optimizer, "optimizer", optimizer)
    check_class(checkpoint, "optimizer_classes", index, optimizer, "optimizer")
    saved, shapes = _saved_optimizer(checkpoint, index)
    folder = optimizer_dir(index)
    source = (f"sharded optimizer checkpoint {checkpoint.directory / folder}" if is_dcp(checkpoint, folder)
              else f"checkpoint file {checkpoint.path(optimizer_files(index)[1])}")
    check_optimizer_state(inner, saved, shapes, source)
    if any(not isinstance(k, str) for k in saved["state"]):
        return  # written by a backend that keys state by position (single, ddp): loaded by position
    current = _group_names(model_of(accelerator, optimizer), inner)
    for g, (names, group) in enumerate(zip(current, saved["param_groups"])):
        if set(names) != set(group["params"]):
            other = sorted(set(group["params"]) - set(names)) or sorted(set(names) - set(group["params"]))
            raise CheckpointError(
                f"{source}: parameter group {g} does not hold the same parameters as the optimizer's (first "
                f"difference {other[0]!r}); nothing was loaded (build the model and optimizer as the run that saved it)"
            )
    # State the optimizer already has names what it keeps per parameter (AdamW: exp_avg, exp_avg_sq, step).
    parameters = {name: p for names, group in zip(current, inner.param_groups) for name, p in zip(names, group["params"])}
    for fqn, entries in saved["state"].items():
        mine = inner.state.get(parameters[fqn]) if fqn in parameters else None
        if mine and isinstance(entries, dict) and set(entries) != set(mine):
            raise CheckpointError(
                f"{source}: parameter {fqn!r} has saved state {sorted(entries)} but this {type(inner).__name__} keeps "
                f"{sorted(mine)}; nothing was loaded (load it into the kind of optimizer that saved it)"
            )


def _target(saved: torch.Size, dtype: torch.dtype, parameter: torch.Tensor | None) -> torch.Tensor:
    """Where DCP reads a state tensor this optimizer has not created (an SGD without momentum loading one with
    a momentum buffer): sharded like its parameter when shaped like it, else whole on every process."""
    if parameter is not None and tuple(parameter.shape) == tuple(saved):
        return torch.empty_like(parameter.detach(), dtype=dtype)
    return torch.empty(saved, dtype=dtype)


def load_optimizer(accelerator: Any, model: nn.Module, optimizer: Any, checkpoint: CheckpointReader, index: int) -> None:
    """Load what :func:`save_optimizer` wrote (checked by :func:`check_optimizer`)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)
    folder = optimizer_dir(index)
    if is_dcp(checkpoint, folder):
        rest = checkpoint.torch_load(_skeleton_name(index))
        entries = dcp_metadata(checkpoint, folder).state_dict_metadata
        current, _ = _split(get_optimizer_state_dict(model, inner))  # creates the state a fresh optimizer lacks
        parameters = dict(getattr(model, "_orig_mod", model).named_parameters())
        tensors = {}
        for key, entry in entries.items():
            if key not in current:
                _, fqn, _ = key.split("/", 2)
                current[key] = _target(entry.size, entry.properties.dtype, parameters.get(fqn))
            tensors[key] = current[key]
        dcp_load(tensors, checkpoint, folder, _distributed(accelerator))
        for key, value in tensors.items():
            _, fqn, name = key.split("/", 2)
            rest["state"].setdefault(fqn, {})[name] = value
        set_optimizer_state_dict(model, inner, rest)
        return
    state = read_optimizer_state(checkpoint, index)
    if any(not isinstance(k, str) for k in state.get("state", {})):
        # Written by a backend that keys optimizer state by position (single, ddp): the same parameters in order.
        inner.load_state_dict(state)
        return
    set_optimizer_state_dict(model, inner, state, options=_options(True))
