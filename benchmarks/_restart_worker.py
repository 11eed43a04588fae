"""Worker of ``restarts.py``: the script both launchers start on 2 CPU processes, killed once, resumed.

    _restart_worker.py OUT PROJECT [--kill-at S]

An MLP trained through ``plait.Accelerator`` for 8 steps, a checkpoint (``save_state``, automatic
naming in PROJECT) every 2. With ``--kill-at S``, global rank 1 writes ``time.time()`` to
PROJECT/killed and SIGKILLs itself right after step S, once (while that file is absent). A restarted
job loads the newest checkpoint and trains on; its rank 0 writes ``time.time()`` to PROJECT/resumed
when its first step after resuming ends. Rank 0 writes OUT: the parameters, and the restart count.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator, ProjectConfiguration

STEPS, SAVE_EVERY, BATCH = 8, 2, 16


class Progress:
    """The steps done, saved and restored with the state."""

    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self) -> dict[str, int]:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.steps = int(state["steps"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("project")
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()
    project = Path(args.project)

    accelerator = Accelerator(project_config=ProjectConfiguration(
        project_dir=str(project), automatic_checkpoint_naming=True, total_limit=2))
    generator = torch.Generator().manual_seed(0)
    samples = accelerator.num_processes * BATCH * STEPS
    data = TensorDataset(torch.randn(samples, 64, generator=generator), torch.randn(samples, 1, generator=generator))
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=BATCH))
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    checkpoints = project / "checkpoints"
    resuming = checkpoints.is_dir() and any(checkpoints.glob("checkpoint_*"))
    if resuming:
        accelerator.load_state()
    for x, y in accelerator.skip_first_batches(loader, progress.steps):
        accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
        optimizer.step()
        optimizer.zero_grad()
        progress.steps += 1
        if resuming and accelerator.is_main_process:
            (project / "resumed").write_text(repr(time.time()))
            resuming = False
        if progress.steps % SAVE_EVERY == 0:
            accelerator.save_state()
        killed = project / "killed"
        if args.kill_at == progress.steps and accelerator.process_index == 1 and not killed.exists():
            killed.write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGKILL)
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        report = {"params": {k: v.flatten().tolist() for k, v in state.items()},
                  "restart_count": int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))}
        Path(args.out).write_text(json.dumps(report))
    accelerator.end_training()


if __name__ == "__main__":
    main()
