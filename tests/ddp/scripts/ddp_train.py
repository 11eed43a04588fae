"""A user's training script, started by torchrun or by ``srun python ddp_train.py`` (SLURM variables only).

Trains the shared problem of ``ddp_workers`` (2 epochs, batch 8 per process) and writes
``<out>/rank<r>.pt``: the final parameters and what this process learnt about the job.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
import ddp_workers as W

from plait import Accelerator


def main() -> None:
    out = Path(sys.argv[1])
    accelerator = Accelerator()
    model, _ = W._train(accelerator, W.make_model())
    info = {
        "process_index": accelerator.process_index,
        "local_process_index": accelerator.local_process_index,
        "num_processes": accelerator.num_processes,
        "backend": accelerator.backend,
        "distributed_type": str(accelerator.distributed_type),
        "RANK": os.environ.get("RANK"),
        "WORLD_SIZE": os.environ.get("WORLD_SIZE"),
        "LOCAL_WORLD_SIZE": os.environ.get("LOCAL_WORLD_SIZE"),
        "MASTER_ADDR": os.environ.get("MASTER_ADDR"),
        "TORCHELASTIC_RUN_ID": os.environ.get("TORCHELASTIC_RUN_ID"),
    }
    torch.save({"params": W.params(accelerator.unwrap_model(model)), "info": info},
               out / f"rank{accelerator.process_index}.pt")
    accelerator.end_training()


if __name__ == "__main__":
    main()
