"""``save_state``/``load_state`` through DeepSpeed's own engine checkpoints, inside core's atomic checkpoint.

The engine writes its files (each process its own ZeRO partitions of the
optimizer states, the main process the module states) under ``zero/`` of the
checkpoint being written; every file enters core's manifest. ``zero/plait_zero.json``
records the ZeRO stage and the number of processes, checked before loading.

An inference engine (ZeRO-3, no optimizer: a frozen teacher) has no DeepSpeed checkpoint
to write: its gathered weights go in core's ``model_<i>.safetensors`` and are loaded back
into its partitions.

DeepSpeed reads its files with ``torch.load(weights_only=False)``; here they are
read with ``weights_only=True``, allowing only the few DeepSpeed and Python
classes its checkpoints hold, so a checkpoint cannot run code when loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.checkpoint import MANIFEST
from plait.errors import CheckpointError

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointWriter

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
        }
        (folder / INFO).write_text(json.dumps(info, indent=1, sort_keys=True), encoding="utf-8")
    accelerator.wait_for_everyone()
    engine.save_checkpoint(str(folder), tag=TAG)  # ends with a barrier: every process's files are complete
    if accelerator.is_main_process:
        writer.add_tree(_folder(index))


def load(accelerator: Accelerator, engine: Any, directory: str, index: int, strict: bool) -> None:
    """Check the saved stage and process count, then ``engine.load_checkpoint`` (model, optimizer, scheduler)."""
    folder = Path(directory) / _folder(index)
    info_path = folder / INFO
    if not info_path.is_file():
        try:
            manifest = json.loads((Path(directory) / MANIFEST).read_text(encoding="utf-8"))
            backend = manifest.get("metadata", {}).get("backend", "unknown")
        except (OSError, ValueError, AttributeError):
            backend = "unknown"
        raise CheckpointError(
            f"checkpoint {directory} has no DeepSpeed engine checkpoint ({_folder(index)}/{INFO} is missing; it was "
            f"saved by backend {backend!r}): load it with that backend, or save it again under backend 'zero'; "
            f"nothing was loaded"
        )
    info = json.loads(info_path.read_text(encoding="utf-8"))
    stage = int(engine.zero_optimization_stage())
    if int(info["stage"]) != stage:
        raise CheckpointError(
            f"checkpoint {directory} was saved with ZeRO stage {info['stage']}, but this run uses ZeRO stage {stage}: "
            f"load it with zero option stage={info['stage']} (or convert it to full weights with DeepSpeed's "
            f"zero_to_fp32.py and load those); nothing was loaded"
        )
    if int(info["num_processes"]) != accelerator.num_processes:
        raise CheckpointError(
            f"checkpoint {directory} was saved by {info['num_processes']} processes (ZeRO partitions of that many), "
            f"but this run has {accelerator.num_processes}: resume with {info['num_processes']} processes; "
            f"nothing was loaded"
        )
    with _safe_loading(engine):
        path, _ = engine.load_checkpoint(str(folder), tag=TAG, load_module_strict=strict)
    if path is None:
        raise CheckpointError(f"DeepSpeed could not load the engine checkpoint in {folder}")


def save_inference(accelerator: Accelerator, engine: Any, writer: CheckpointWriter, index: int) -> None:
    """The gathered weights of an inference engine, in core's format (every process gathers, the main one writes)."""
    from plait.checkpoint import default_state

    default_state.save_model(accelerator, engine, writer, index)


def load_inference(accelerator: Accelerator, engine: Any, directory: str, index: int, strict: bool) -> None:
    """Load :func:`save_inference`'s file into the engine's partitions (process 0's copy, partitioned to all)."""
    import deepspeed

    from plait.checkpoint import default_state
    from plait.checkpoint.tensor_files import check_compatible, load_safetensors

    path = Path(directory) / default_state.model_file(index)
    state = load_safetensors(path)
    module = engine.module
    with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0):
        check_compatible(module, state, f"checkpoint file {path}", strict)
        if accelerator.process_index == 0:
            module.load_state_dict(state, strict=strict)


class _safe_loading:
    """Make the engine's checkpoint engine read with ``torch.load(weights_only=True)`` for one load."""

    def __init__(self, engine: Any) -> None:
        self.checkpoint_engine = engine.checkpoint_engine

    def __enter__(self) -> None:
        import torch

        allowed = _allowed_globals()

        def load(path: str, map_location: Any = None) -> Any:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)

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
