"""Worker of ``cli.py``: the script both launchers start on 2 CPU processes (``plait launch`` and ``torchrun``).

    _cli_first_step.py MARKER

An MLP trained through ``plait.Accelerator``: rank 0 writes ``time.time()`` to MARKER at
the end of its first optimizer step, then every process stops.
"""

from __future__ import annotations

import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator


def main(marker: str) -> None:
    accelerator = Accelerator()
    data = TensorDataset(torch.randn(512, 64), torch.randn(512, 1))
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=32))
    for x, y in loader:
        accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
        if accelerator.is_main_process:
            with open(marker, "w") as f:
                f.write(repr(time.time()))
        break
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
