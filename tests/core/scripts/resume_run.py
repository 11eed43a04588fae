"""A training run with every source of randomness, interrupted and resumed by HF Accelerate's protocol.

--mode full:      train all epochs, write the final parameters.
--mode interrupt: train until global step --save-at, save_state into <ckpt>/step_<n>, exit.
--mode resume:    load_state(<ckpt>/step_<n>), skip_first_batches for the interrupted epoch,
                  then plain iteration; write the final parameters.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from plait import Accelerator, set_seed


class NoisyDataset(Dataset):
    """Draws from the global torch RNG when an item is loaded, like a random augmentation."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i] + 0.01 * torch.randn(8), self.y[i]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["full", "interrupt", "resume"], required=True)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", default=None)
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--save-at", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mixed-precision", default="no")
    args = parser.parse_args()

    set_seed(42)
    accelerator = Accelerator(gradient_accumulation_steps=args.accum, mixed_precision=args.mixed_precision)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.8)
    loader = DataLoader(NoisyDataset(50), batch_size=4, shuffle=True)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    starting_epoch, resume_step, global_step = 0, None, 0
    if args.mode == "resume":
        path = Path(args.ckpt) / f"step_{args.save_at}"
        accelerator.load_state(path)
        global_step = int(path.name.split("_")[1])
        starting_epoch = global_step // len(loader)
        resume_step = global_step - starting_epoch * len(loader)

    for epoch in range(starting_epoch, args.epochs):
        model.train()
        if resume_step is not None and epoch == starting_epoch:
            active = accelerator.skip_first_batches(loader, resume_step)
        else:
            active = loader
        for x, y in active:
            with accelerator.accumulate(model):
                # python and numpy randomness on the training path, restored by load_state too
                scale = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
                loss = nn.functional.mse_loss(model(x), y) * scale
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            global_step += 1
            if args.mode == "interrupt" and global_step == args.save_at:
                accelerator.save_state(Path(args.ckpt) / f"step_{global_step}")
                return
    state = {k: v.detach().clone().contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    save_file(state, args.out)


if __name__ == "__main__":
    main()
