"""``plait launch --num-processes 2 --backend int8_ddp tests/train.py OUT``: linear regression, written as a user
writes a plait script, measuring at each step how far the communicated gradient is from the exact average.

The exact average is computed beside DDP: each process's own gradient of the mean squared error is
``2/B * r^T x`` (``r`` the residuals), averaged over the processes in float32 with ``accelerator.reduce``. The
int8 all-reduce may miss it by half a quantization step: ``max |g| / 127 / 2``, the largest magnitude of any
process's gradient. The main process writes each step's loss, error and that bound, and the final parameters,
to OUT (JSON).
"""

from __future__ import annotations

import json
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator


def main(out: str) -> None:
    accelerator = Accelerator()
    torch.manual_seed(0)
    x = torch.randn(128, 8)
    y = x @ torch.linspace(-2.0, 2.0, 8).unsqueeze(1) + 0.5
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    model = torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    module = accelerator.unwrap_model(model)
    record: dict[str, list[float]] = {"losses": [], "errors": [], "bounds": []}
    for _ in range(4):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            with torch.no_grad():
                residual = xb @ module.weight.T + module.bias - yb
                mine = torch.cat([(2 / len(xb) * residual.T @ xb).flatten(), 2 / len(xb) * residual.sum(0)])
                exact = accelerator.reduce(mine.clone(), "mean")
                peak = accelerator.gather(mine.abs().max().reshape(1)).max()
                communicated = torch.cat([module.weight.grad.flatten(), module.bias.grad])
            record["errors"].append((communicated - exact).abs().max().item())
            record["bounds"].append(peak.item() / 127 / 2)
            record["losses"].append(accelerator.reduce(loss.detach(), "mean").item())
            optimizer.step()
            optimizer.zero_grad()
    if accelerator.is_main_process:
        result = {**record, "wrapper": type(model).__name__, "processes": accelerator.num_processes,
                  "params": torch.cat([module.weight.flatten(), module.bias]).tolist()}
        with open(out, "w", encoding="utf-8") as file:
            json.dump(result, file)
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
