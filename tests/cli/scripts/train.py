"""Train a small regression model with plait; rank 0 writes the parameters and what the workers were told.

``python train.py OUT [--steps N] [--batch B]``: each process reads batches of B.
``reference(world, batch, steps)`` is the same run with plain PyTorch on one process
and the whole global batch, for the oracle.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

FEATURES = 6


def data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, FEATURES, generator=generator)
    return x, x @ torch.randn(FEATURES, 1, generator=generator) + 0.5


def model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def reference(world: int, batch: int, steps: int) -> dict[str, list[float]]:
    x, y = data(world * batch * steps)
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    for step in range(steps):
        rows = slice(step * world * batch, (step + 1) * world * batch)
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x[rows]), y[rows]).backward()
        optimizer.step()
    return {name: value.flatten().tolist() for name, value in net.state_dict().items()}


def main() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from plait import Accelerator

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()

    accelerator = Accelerator()
    x, y = data(accelerator.num_processes * args.batch * args.steps)
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch)
    net, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    for inputs, targets in loader:
        optimizer.zero_grad()
        accelerator.backward(torch.nn.functional.mse_loss(net(inputs), targets))
        optimizer.step()
    state = accelerator.get_state_dict(net)
    if accelerator.is_main_process:
        report = {
            "params": {name: value.flatten().tolist() for name, value in state.items()},
            "world_size": accelerator.num_processes,
            "backend": accelerator.backend,
            "mixed_precision": accelerator.mixed_precision,
            "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
            "backend_options": repr(accelerator.backend_options),
            "environment": {k: v for k, v in os.environ.items() if k.startswith(("PLAIT_", "CUDA_VISIBLE"))},
        }
        Path(args.out).write_text(json.dumps(report), encoding="utf-8")
    accelerator.end_training()


if __name__ == "__main__":
    main()
