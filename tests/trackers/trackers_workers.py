"""A small training job that logs as a user would, in this process or in the workers of ``run_processes``.

Module-level functions only: ``plait.testing.run_processes`` re-imports them in each worker.
"""

from __future__ import annotations

import sys
from typing import Any

import torch

CONFIG = {"lr": 0.1, "batch_size": 4, "optimizer": {"name": "sgd", "momentum": 0.0}, "amp": False}
TRACKER_MODULES = ("torch.utils.tensorboard", "tensorboard", "wandb", "comet_ml")


def fit(accelerator: Any, epochs: int = 2, log: bool = True) -> list[float]:
    """Fit y = 3x - 1 with a linear model, logging the loss (a tensor), the lr and the epoch every step.

    :return: the loss of each step, as logged.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, generator=generator)
    y = 3 * x - 1
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=CONFIG["lr"])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=CONFIG["batch_size"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses = []
    step = 0
    for epoch in range(epochs):
        for inputs, targets in loader:
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            if log:
                accelerator.log({"loss": loss.detach(), "lr": optimizer.param_groups[0]["lr"], "epoch": epoch}, step=step)
            losses.append(loss.item())
            step += 1
    return losses


def two_processes(project_dir: str) -> dict[str, Any]:
    """Each rank trains and logs to every tracker; returns what this rank saw of the trackers."""
    from plait import Accelerator

    accelerator = Accelerator(log_with=["tensorboard", "wandb", "comet_ml"], project_dir=project_dir)
    pm = accelerator.plugin_manager
    hooks = ("plait_tracker_start", "plait_tracker_log", "plait_tracker_finish")
    implementations = {hook: len(getattr(pm.hook, hook).get_hookimpls()) for hook in hooks}
    accelerator.init_trackers("two", config={**CONFIG, "processes": accelerator.num_processes})
    losses = fit(accelerator)
    accelerator.log({"rank": accelerator.process_index}, step=len(losses))
    tracker = accelerator.get_tracker("wandb", unwrap=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "rank": accelerator.process_index,
        "losses": losses,
        "implementations": implementations,
        "tracker plugins": sorted(name for name, _ in pm.list_name_plugin() if name.startswith("plait.trackers:")),
        "imported": sorted(module for module in TRACKER_MODULES if module in sys.modules),
        "unwrapped": type(tracker).__qualname__,
    }
