"""Run under ``torchrun --nproc-per-node 2``: saves a checkpoint mid-epoch (3 of each process's 8 batches) and one
at the end of the epoch, into ``argv[1]``; each rank writes the batches it saw to ``rank<r>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from plait import Accelerator


def build(accelerator: Accelerator) -> tuple[torch.nn.Module, torch.optim.Optimizer, DataLoader]:
    """What the run that saved and the run that loads both prepare."""
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(list(range(16)), batch_size=1)
    return accelerator.prepare(model, optimizer, loader)


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    model, optimizer, loader = build(accelerator)
    seen = []
    for i, batch in enumerate(loader):
        seen.append(int(batch))
        accelerator.backward(model(torch.ones(1, 2)).sum())
        optimizer.step()
        optimizer.zero_grad()
        if i == 2:
            accelerator.save_state(out / "mid_epoch")
    accelerator.save_state(out / "epoch_end")
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(
        {"seen": seen, "num_processes": accelerator.num_processes, "backend": accelerator.backend,
         "weight": model.module.weight.detach().flatten().tolist() if hasattr(model, "module") else None}))
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
