"""``save_state``/``load_state`` through DeepSpeed's own engine checkpoints, inside core's atomic checkpoint.

The engine writes its files (each process its own ZeRO partitions of the
optimizer states, the main process the module states) under ``zero/`` of the
checkpoint being written; every file enters core's manifest. ``zero/plait_zero.json``
records the ZeRO stage, the number of processes and the optimizer's class, checked before loading.

An inference engine (ZeRO-3, no optimizer: a frozen teacher) has no DeepSpeed checkpoint
to write: its gathered weights go in core's ``model_<i>.safetensors`` and are loaded back
into its partitions.

DeepSpeed reads its files with ``torch.load(weights_only=False)``; here every file it reads goes
through the checkpoint's reader: only files the manifest lists, with ``weights_only=True``,
allowing only the few DeepSpeed and Python classes its checkpoints hold, so a checkpoint cannot
run code when loaded. :func:`check` and :func:`check_optimizer` read this process's files first
(the load then takes those reads) and refuse what does not fit (another stage, process count,
optimizer class, parameter shapes or groups) before anything changes; every process refuses
when one does (core's ``load_state`` agrees on its checks), since the others would wait forever in
DeepSpeed's collectives.
DeepSpeed's universal checkpoints, which it reads without restriction, are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.errors import CheckpointError

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointReader, CheckpointWriter

FOLDER = "zero"
TAG = "state"
INFO = "plait_zero.json"


def _folder(index: int) -> str:
    return FOLDER if index == 0 else f"{FOLDER}_{index}"


def save(accelerator: Accelerator, engine: Any, writer: CheckpointWriter, index: int) -> None:
    """Write the engine's checkpoint (every process takes part) and enter its files in the manifest."""
    if not accelerator.sync_gradients:
        raise CheckpointError(
            "backend 'zero' cannot save_state between micro-steps of gradient accumulation: DeepSpeed's checkpoint "
            "does not hold gradients accumulated so far; call save_state after a step where "
            "accelerator.sync_gradients is True"
        )
    import deepspeed

    folder = writer.directory / _folder(index)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        info = {
            "stage": int(engine.zero_optimization_stage()),
            "num_processes": accelerator.num_processes,
            "deepspeed": deepspeed.__version__,
            "fp16": bool(engine.fp16_enabled()),
            "bf16": bool(engine.bfloat16_enabled()),
            "optimizer_class": optimizer_class(engine),
        }
        (folder / INFO).write_text(json.dumps(info, indent=1, sort_keys=True), encoding="utf-8")
    accelerator.wait_for_everyone()
    engine.save_checkpoint(str(folder), tag=TAG)  # ends with a barrier: every process's files are complete
    if accelerator.is_main_process:
        writer.add_tree(_folder(index))


def optimizer_class(engine: Any) -> str:
    """``module.qualname`` of the optimizer DeepSpeed's ZeRO optimizer steps (the user's AdamW, SGD...)."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    return f"{type(inner).__module__}.{type(inner).__qualname__}"


def _info(checkpoint: CheckpointReader, index: int) -> dict[str, Any]:
    name = f"{_folder(index)}/{INFO}"
    if not checkpoint.has(name):
        backend = checkpoint.metadata.get("backend", "unknown")
        raise CheckpointError(
            f"checkpoint {checkpoint.directory} has no DeepSpeed engine checkpoint ({name} is missing; it was "
            f"saved by backend {backend!r}): load it with that backend, or save it again under backend 'zero'; "
            f"nothing was loaded"
        )
    path = checkpoint.path(name)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if type(info["stage"]) is not int or type(info["num_processes"]) is not int:
            raise ValueError("stage and num_processes must be integers")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not what save_state writes ({exc}); nothing was loaded") from None
    return dict(info)


def _files(accelerator: Accelerator, engine: Any, checkpoint: CheckpointReader, index: int, kind: str) -> list[str]:
    """The listed DeepSpeed files of ``kind`` (``model``, ``optim``) that this process's engine will read."""
    prefix = f"{_folder(index)}/{TAG}/"
    everyone = kind == "optim" and engine.zero_elastic_checkpoint() and engine.zero_optimization_stage() < 3
    mine = f"zero_pp_rank_{accelerator.process_index}_"
    names = [name for name in checkpoint.names(prefix) if name.endswith(f"_{kind}_states.pt")
             and (everyone or "zero_pp_rank_" not in name or mine in name)]
    if not names:
        raise CheckpointError(
            f"checkpoint {checkpoint.directory} lists no DeepSpeed {kind} states for process "
            f"{accelerator.process_index} under {prefix}; nothing was loaded (load a checkpoint save_state wrote)"
        )
    return names


def _expected_shapes(engine: Any) -> dict[str, tuple[int, ...]]:
    """The engine module's keys with their full shapes (a ZeRO-3 partition's ``ds_shape``)."""
    parameters = dict(engine.module.named_parameters())
    return {key: tuple(getattr(parameters.get(key), "ds_shape", tensor.shape))
            for key, tensor in engine.module.state_dict().items()}


def check(accelerator: Accelerator, engine: Any, checkpoint: CheckpointReader, index: int, strict: bool) -> None:
    """Refuse, before anything changes, an engine checkpoint this engine cannot load: another ZeRO stage or
    process count, a universal checkpoint, module states of other keys or shapes, a file that is not safe."""
    import torch

    from plait.checkpoint.tensor_files import check_shapes

    directory = checkpoint.directory
    info = _info(checkpoint, index)
    stage = int(engine.zero_optimization_stage())
    if info["stage"] != stage:
        raise CheckpointError(
            f"checkpoint {directory} was saved with ZeRO stage {info['stage']}, but this run uses ZeRO stage {stage}: "
            f"load it with zero option stage={info['stage']} (or convert it to full weights with DeepSpeed's "
            f"zero_to_fp32.py and load those); nothing was loaded"
        )
    if info["num_processes"] != accelerator.num_processes:
        raise CheckpointError(
            f"checkpoint {directory} was saved by {info['num_processes']} processes (ZeRO partitions of that many), "
            f"but this run has {accelerator.num_processes}: resume with {info['num_processes']} processes; "
            f"nothing was loaded"
        )
    if engine.load_universal_checkpoint():
        raise CheckpointError(
            f"the DeepSpeed config sets checkpoint.load_universal, but load_state reads plait's checkpoint "
            f"{directory} (DeepSpeed reads universal checkpoints with an unrestricted unpickler): remove "
            f"load_universal from the config; nothing was loaded"
        )
    for name in _files(accelerator, engine, checkpoint, index, "model"):
        state = checkpoint.torch_load(name, _allowed_globals())  # the load takes this read
        source = f"checkpoint file {checkpoint.path(name)}"
        try:
            saved = {k: tuple(v.shape) for k, v in state["module"].items() if isinstance(v, torch.Tensor)}
            for group in state.get("param_shapes") or []:
                saved.update({k: tuple(int(n) for n in shape) for k, shape in group.items()})
            saved.update({k: tuple(int(n) for n in s) for k, s in (state.get("frozen_param_shapes") or {}).items()})
        except (KeyError, TypeError, AttributeError, ValueError):
            raise CheckpointError(f"{source} is not the module states DeepSpeed writes; nothing was loaded") from None
        check_shapes(_expected_shapes(engine), saved, source, strict)


def check_optimizer(accelerator: Accelerator, engine: Any, checkpoint: CheckpointReader, index: int) -> None:
    """Refuse another optimizer class (recorded in ``plait_zero.json``), other parameter groups or other
    per-parameter state than this engine's optimizer has, before anything changes."""
    info = _info(checkpoint, index)
    recorded, current = info.get("optimizer_class"), optimizer_class(engine)
    if recorded is not None and recorded != current:
        raise CheckpointError(
            f"checkpoint file {checkpoint.path(f'{_folder(index)}/{INFO}')}: the engine's optimizer was a {recorded} "
            f"but this one is a {current}; nothing was loaded (build the same optimizer as the run that saved it)"
        )
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    for name in _files(accelerator, engine, checkpoint, index, "optim"):
        state = checkpoint.torch_load(name, _allowed_globals())  # the load takes this read
        source = f"checkpoint file {checkpoint.path(name)}"
        ours = state.get("optimizer_state_dict") if isinstance(state, dict) else None
        base = (ours.get("base_optimizer_state", ours.get("optimizer_state_dict")) if isinstance(ours, dict) else None)
        if isinstance(base, list):
            continue  # an elastic checkpoint: per-parameter lists, checked by class only
        if not (isinstance(base, dict) and isinstance(base.get("param_groups"), list)
                and isinstance(base.get("state"), dict)):
            raise CheckpointError(f"{source} is not the optimizer states DeepSpeed writes; nothing was loaded")
        if len(base["param_groups"]) != len(inner.param_groups):
            raise CheckpointError(
                f"{source}: it holds {len(base['param_groups'])} parameter groups but the optimizer has "
                f"{len(inner.param_groups)}; nothing was loaded (build the optimizer as the run that saved it)"
            )
        mine = next((set(s) for s in inner.state.values() if s), None)
        for key, entries in base["state"].items():
            if mine is not None and isinstance(entries, dict) and set(entries) != mine:
                raise CheckpointError(
                    f"{source}: state {key!r} holds {sorted(entries)} but this {type(inner).__name__} keeps "
                    f"{sorted(mine)}; nothing was loaded (load it into the kind of optimizer that saved it)"
                )


def load(accelerator: Accelerator, engine: Any, checkpoint: CheckpointReader, index: int, strict: bool) -> None:
    """``engine.load_checkpoint`` (model, optimizer, scheduler), every file read through ``checkpoint``
    (checked by :func:`check` and :func:`check_optimizer`)."""
    folder = checkpoint.directory / _folder(index)
    with _reading_through(engine, checkpoint):
        path, _ = engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=strict)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load the engine checkpoint in {folder}")


def save_inference(accelerator: Accelerator, engine: Any, writer: CheckpointWriter, index: int) -> None:
    """The gathered weights of an inference engine, in core's format (every process gathers, the main one writes)."""
    from plait.checkpoint import default_state

    default_state.save_model(accelerator, engine, writer, index)


def check_inference(engine: Any, checkpoint: CheckpointReader, index: int, strict: bool) -> None:
    """Refuse, from the file's header, weights that do not fit an inference engine's module."""
    from plait.checkpoint import default_state
    from plait.checkpoint.tensor_files import check_shapes

    name = default_state.model_file(index)
    check_shapes(_expected_shapes(engine), checkpoint.safetensors_shapes(name), f"checkpoint file "
                 f"{checkpoint.path(name)}", strict)


def load_inference(accelerator: Accelerator, engine: Any, checkpoint: CheckpointReader, index: int, strict: bool) -> None:
    """Load :func:`save_inference`'s file into the engine's partitions (process 0's copy, partitioned to all)."""
    import deepspeed

    from plait.checkpoint import default_state

    state = checkpoint.load_safetensors(default_state.model_file(index))
    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
        if accelerator.process_index == 0:
            module.load_state_dict(state, strict=strict)


class _reading_through:
    """Make the engine's checkpoint engine read through ``checkpoint`` (listed files only,
    ``torch.load(weights_only=True)`` with :func:`_allowed_globals`) for one load."""

    def __init__(self, engine: Any, checkpoint: CheckpointReader) -> None:
        self.checkpoint_engine, self.checkpoint = engine.checkpoint_engine, checkpoint

    def __enter__(self) -> None:
        allowed, checkpoint = _allowed_globals(), self.checkpoint
        root = checkpoint.directory.resolve()

        def load(path: str, map_location: Any = None) -> Any:
            try:
                name = Path(path).resolve().relative_to(root).as_posix()
            except ValueError:
                raise CheckpointError(
                    f"DeepSpeed asked for {path}, which is outside checkpoint {checkpoint.directory}; nothing of it "
                    f"was read"
                ) from None
            return checkpoint.torch_load(name, allowed)

        self.checkpoint_engine.load = load

    def __exit__(self, *exc: object) -> None:
        self.checkpoint_engine.__dict__.pop("load", None)


def _allowed_globals() -> list[Any]:
    """The classes DeepSpeed's ZeRO checkpoints hold besides tensors and containers."""
    import argparse
    import collections

    allowed: list[Any] = [collections.OrderedDict, argparse.Namespace]
    candidates = [
        ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
        ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
        ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
        ("deepspeed.utils.tensor_fragment", "fragment_address"),
        ("deepspeed.checkpoint.constants", "PARAM_SLICE_MAPPINGS"),
    ]
    import importlib

    for module_name, name in candidates:
        try:
            value = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            continue
        if isinstance(value, type):
            allowed.append(value)
    return allowed
