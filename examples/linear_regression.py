"""The first plait script: learn ``y = a * x + b`` with SGD.

A plain PyTorch loop with four changes: build an ``Accelerator``, pass the model, the optimizer and the
dataloader through ``accelerator.prepare``, call ``accelerator.backward(loss)`` instead of
``loss.backward()``, and gather what you measure with ``accelerator.gather_for_metrics``. The same file runs
on one process, on several, on a GPU or on the CPU::

    python linear_regression.py
    plait launch --num-processes 2 --cpu linear_regression.py --batch-size 8

``--batch-size`` is per process: two processes of 8 take the same 16 samples per step as one process of 16,
and learn the same ``a`` and ``b``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator
from plait.utils import set_seed


class LinearModel(nn.Module):
    """``a * x + b``, both starting at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b


def make_dataset(size: int, a: float, b: float, noise: float, seed: int) -> TensorDataset:
    """``size`` points on the line ``y = a * x + b``, with Gaussian noise; the same on every process."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, generator=generator)
    y = a * x + b + noise * torch.randn(size, generator=generator)
    return TensorDataset(x, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=float, default=2.0, help="the slope to learn")
    parser.add_argument("--b", type=float, default=3.0, help="the intercept to learn")
    parser.add_argument("--noise", type=float, default=0.1, help="standard deviation of the noise on y")
    parser.add_argument("--size", type=int, default=1024, help="number of samples")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch and process")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result-file", default=None, help="write a, b and the loss here as JSON (main process)")
    args = parser.parse_args()
    if args.batch_size < 1 or args.size < 1 or args.epochs < 1:
        parser.error(f"--batch-size {args.batch_size}, --size {args.size} and --epochs {args.epochs}: "
                     f"each must be 1 or more")

    accelerator = Accelerator()
    set_seed(args.seed)
    dataset = make_dataset(args.size, args.a, args.b, args.noise, seed=args.seed)
    dataloader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    model = LinearModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)

    for epoch in range(args.epochs):
        model.train()
        squared_errors = []
        for x, y in dataloader:
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            with torch.no_grad():
                squared_errors.append(accelerator.gather_for_metrics((model(x) - y) ** 2))
        accelerator.print(f"epoch {epoch}: mean squared error {torch.cat(squared_errors).mean():.6f}")

    # The loss over the whole dataset once training is done, each sample counted once.
    model.eval()
    with torch.no_grad():
        errors = torch.cat([accelerator.gather_for_metrics((model(x) - y) ** 2) for x, y in dataloader])
    final_loss = float(errors.mean())
    learned = accelerator.unwrap_model(model)
    a, b = learned.a.item(), learned.b.item()
    accelerator.print(f"learned a = {a:.4f} (true {args.a}), b = {b:.4f} (true {args.b}), final loss {final_loss:.6f}")
    if args.result_file and accelerator.is_main_process:
        Path(args.result_file).write_text(json.dumps({
            "a": a, "b": b, "final_loss": final_loss, "samples_seen": len(errors),
            "num_processes": accelerator.num_processes,
        }))
    accelerator.end_training()


if __name__ == "__main__":
    main()
