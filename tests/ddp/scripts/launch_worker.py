"""A "notebook" for tests/ddp/test_state_processes.py: a plain Python process (no launcher) that calls
``notebook_launcher`` and ``debug_launcher`` with 2 processes on a training function defined here,
then checks that a launch is refused once an Accelerator exists in it.

Each launched process writes ``<out>/<launcher>_rank<r>.pt`` (its final parameters and what it
learnt about the job); this process writes ``<out>/parent.json``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
import ddp_workers as W

from plait import debug_launcher, notebook_launcher
from plait.testing import free_port


def train(out: str, launcher: str) -> None:
    from plait import Accelerator, PartialState

    accelerator = Accelerator()
    model, _ = W._train(accelerator, W.make_model())  # 2 epochs, 8 samples per process and step
    info = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "partial_state_index": PartialState().process_index,
        "backend": accelerator.backend,
        "distributed_type": str(accelerator.distributed_type),
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "env": {name: os.environ.get(name) for name in (
            "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "PLAIT_MIXED_PRECISION", "PLAIT_CPU",
        )},
        "pid": os.getpid(),
    }
    torch.save({"params": W.params(accelerator.unwrap_model(model)), "info": info},
               Path(out) / f"{launcher}_rank{accelerator.process_index}.pt")
    accelerator.end_training()


def main() -> None:
    out = Path(sys.argv[1])
    notebook_launcher(train, (str(out), "notebook"), num_processes=2, use_port=str(free_port()))
    debug_launcher(train, (str(out), "debug"), num_processes=2)
    parent = {"pid": os.getpid(), "env_after": {name: os.environ.get(name) for name in ("RANK", "WORLD_SIZE")}}

    from plait import Accelerator

    accelerator = Accelerator(cpu=True)
    try:
        notebook_launcher(train, (str(out), "refused"), num_processes=2, use_port=str(free_port()))
        parent["refused"] = None
    except ValueError as exc:
        parent["refused"] = str(exc)
    (out / "parent.json").write_text(json.dumps(parent))
    accelerator.end_training()


if __name__ == "__main__":
    main()
