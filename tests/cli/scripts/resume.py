"""Train train.py's model with a checkpoint every few steps, resuming from the newest one when it exists.

``python resume.py OUT PROJECT [--steps N] [--batch B] [--save-every K] [--kill-at S --marker PATH]``

With ``--kill-at S``, global rank 1 SIGKILLs itself right after step S, once: only while ``--marker``
does not exist (it writes the marker, with ``time.time()`` just before the kill, first). After a
restart the script loads the newest checkpoint of PROJECT and trains on from there; rank 0 writes
OUT (the parameters, ``TORCHELASTIC_RESTART_COUNT``, the step it resumed from and ``time.time()``
when its first step after resuming ended).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from train import data, model


class Progress:
    """The steps done, saved and restored with the state."""

    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])


def main() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from plait import Accelerator, ProjectConfiguration

    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("project")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--save-every", type=int, default=2)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--marker", default=None)
    args = parser.parse_args()

    project = ProjectConfiguration(project_dir=args.project, automatic_checkpoint_naming=True, total_limit=2)
    accelerator = Accelerator(project_config=project)
    x, y = data(accelerator.num_processes * args.batch * args.steps)
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch)
    net, optimizer, loader = accelerator.prepare(net, optimizer, loader)
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    checkpoints = Path(args.project, "checkpoints")
    resumed = checkpoints.is_dir() and any(checkpoints.glob("checkpoint_*"))
    if resumed:
        accelerator.load_state()
    resumed_from = progress.steps
    resumed_at = None
    for inputs, targets in accelerator.skip_first_batches(loader, progress.steps):
        optimizer.zero_grad()
        accelerator.backward(torch.nn.functional.mse_loss(net(inputs), targets))
        optimizer.step()
        progress.steps += 1
        if resumed and resumed_at is None:
            resumed_at = time.time()
        if progress.steps % args.save_every == 0:
            accelerator.save_state()
        if (args.kill_at == progress.steps and accelerator.process_index == 1 and args.marker
                and not Path(args.marker).exists()):
            Path(args.marker).write_text(json.dumps({"killed_at": time.time()}), encoding="utf-8")
            os.kill(os.getpid(), signal.SIGKILL)
    state = accelerator.get_state_dict(net)
    if accelerator.is_main_process:
        report = {
            "params": {name: value.flatten().tolist() for name, value in state.items()},
            "world_size": accelerator.num_processes,
            "steps": progress.steps,
            "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
            "resumed_from": resumed_from if resumed else None,
            "resumed_at": resumed_at,
        }
        Path(args.out).write_text(json.dumps(report), encoding="utf-8")
    accelerator.end_training()


if __name__ == "__main__":
    main()
