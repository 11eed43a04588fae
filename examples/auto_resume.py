"""A training job that survives ``kill -9`` of any worker, and preemption, by itself.

Run it as::

    plait launch --max-restarts 3 --num-processes 2 examples/auto_resume.py --project-dir DIR [--epochs N]

It saves a checkpoint every few steps into ``DIR/checkpoints``. When a worker dies,
``plait launch`` restarts every worker (up to ``--max-restarts`` times), and
``accelerator.resume()`` continues from the newest complete checkpoint: the final
weights, in ``DIR/final/model.safetensors``, are bit-identical to those of a run
that was never interrupted. A SIGTERM (a preemption) makes every worker finish its
step, save and exit with code 143; starting the same command again resumes.

The five lines that make a script resumable are marked ``# resume``.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator, ProjectConfiguration, set_seed


def make_dataset(n: int = 8192, features: int = 32, classes: int = 8) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    centers = torch.randn(classes, features, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    inputs = centers[labels] + 1.5 * torch.randn(n, features, generator=generator)
    return TensorDataset(inputs, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project-dir", required=True, help="where checkpoints and the final weights are written")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--save-every", type=int, default=25, help="optimizer steps between checkpoints")
    args = parser.parse_args()

    torch.set_num_threads(1)
    set_seed(0)
    project = ProjectConfiguration(  # resume
        project_dir=args.project_dir, automatic_checkpoint_naming=True, total_limit=2
    )
    accelerator = Accelerator(project_config=project)  # resume
    train = DataLoader(make_dataset(), batch_size=args.batch_size, shuffle=True)
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 256), nn.GELU(),
                          nn.Linear(256, 8))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=args.epochs * len(train))
    model, optimizer, train, scheduler = accelerator.prepare(model, optimizer, train, scheduler)

    start = accelerator.resume()  # resume: the newest complete checkpoint, if any
    if start.resumed:
        accelerator.print(f"resumed from {start.directory} at epoch {start.epoch}, batch {start.position}")
    steps = 0
    for epoch in range(start.epoch, args.epochs):  # resume
        model.train()
        loss = None  # a checkpoint saved after an epoch's last batch resumes into an empty rest of that epoch
        for inputs, labels in train:
            loss = nn.functional.cross_entropy(model(inputs), labels)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            steps += 1
            if steps % args.save_every == 0:
                accelerator.save_state()  # resume
        if loss is not None:
            accelerator.print(f"epoch {epoch}: last loss {loss.item():.4f}")
    accelerator.save_model(model, os.path.join(args.project_dir, "final"))
    accelerator.end_training()


if __name__ == "__main__":
    main()
