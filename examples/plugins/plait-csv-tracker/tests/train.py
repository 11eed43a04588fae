"""``plait launch --num-processes 2 tests/train.py PROJECT OUT``: linear regression logged to the csv tracker by
name, as a user's script logs. The main process also writes what it logged to OUT (JSON), so that the test can
compare the CSV file with it."""

from __future__ import annotations

import json
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator


def main(project: str, out: str) -> None:
    accelerator = Accelerator(log_with="csv", project_dir=project)
    config = {"lr": 0.05, "epochs": 3, "batch_size": 8, "optimizer": "SGD"}
    accelerator.init_trackers("regression", config=config)
    torch.manual_seed(0)
    x = torch.randn(96, 4)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.25
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=config["lr"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(TensorDataset(x, y), batch_size=8))
    logged: list[dict[str, float]] = []
    step = 0
    for epoch in range(config["epochs"]):
        for xb, yb in loader:
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            mean = accelerator.reduce(loss.detach(), "mean")
            accelerator.log({"loss": mean}, step=step)  # a 0-d tensor
            logged.append({"step": step, "loss": mean.item()})
            step += 1
        with torch.no_grad():
            error = accelerator.unwrap_model(model)(x) - y
        accelerator.log({"epoch": epoch, "eval": {"mse": error.pow(2).mean().item(), "mae": error.abs().mean().item()}},
                        step=step)
    accelerator.end_training()
    if accelerator.is_main_process:
        with open(out, "w", encoding="utf-8") as file:
            json.dump({"logged": logged, "config": config, "processes": accelerator.num_processes}, file)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
