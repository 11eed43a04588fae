"""A generative adversarial network: two models and two optimizers, all passed through ``accelerator.prepare``.

The generator turns 4-D Gaussian noise into 2-D points; the discriminator tells them from real points, drawn
from a Gaussian with mean (2, -1) and standard deviations (0.5, 1.5). Each step trains the discriminator on
real and generated points in one batch (one forward through the prepared model, as DistributedDataParallel
wants), then the generator to fool it. The run prints how far the generated distribution's first two moments
are from the real ones, before and after training::

    python gan.py
    plait launch --num-processes 2 --cpu gan.py --batch-size 32

The noise the generator reads is part of the dataset (each real point comes with a latent vector), so that
two processes of 32 see the same noise as one process of 64 and train the same models.
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

LATENT = 4
REAL_MEAN = torch.tensor([2.0, -1.0])
REAL_STD = torch.tensor([0.5, 1.5])


def make_dataset(size: int, seed: int) -> TensorDataset:
    """``size`` real points and as many latent vectors; the same on every process."""
    generator = torch.Generator().manual_seed(seed)
    real = REAL_MEAN + REAL_STD * torch.randn(size, 2, generator=generator)
    latent = torch.randn(size, LATENT, generator=generator)
    return TensorDataset(real, latent)


def moment_distance(points: torch.Tensor) -> float:
    """The Euclidean distance between (mean, standard deviation) of ``points`` and of the real distribution."""
    mean, std = points.mean(dim=0), points.std(dim=0)
    return float(torch.cat([mean - REAL_MEAN, std - REAL_STD]).norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64, help="real points per batch and process")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048, help="real points in the dataset")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--result-file", default=None, help="write the run's numbers here as JSON (main process)")
    args = parser.parse_args()
    if args.batch_size < 2 or args.size < args.batch_size or args.epochs < 1:
        parser.error(f"--batch-size {args.batch_size}, --size {args.size}, --epochs {args.epochs}: expected a batch "
                     f"of at least 2, a dataset at least one batch large and 1 or more epochs")

    accelerator = Accelerator()
    set_seed(args.seed)
    dataloader = DataLoader(make_dataset(args.size, seed=1), batch_size=args.batch_size, shuffle=True)
    generator = nn.Sequential(nn.Linear(LATENT, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    discriminator = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2), nn.Linear(32, 32), nn.LeakyReLU(0.2),
                                  nn.Linear(32, 1))
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(0.5, 0.999))
    generator, discriminator, optimizer_g, optimizer_d, dataloader = accelerator.prepare(
        generator, discriminator, optimizer_g, optimizer_d, dataloader
    )
    # Fixed noise to measure the generator with, the same on every process.
    probe = torch.randn(4096, LATENT, generator=torch.Generator().manual_seed(2)).to(accelerator.device)

    with torch.no_grad():
        distance_before = moment_distance(generator(probe).float().cpu())
    accelerator.print(f"before training: moment distance {distance_before:.4f}")
    bce = nn.functional.binary_cross_entropy_with_logits
    d_losses: list[float] = []
    g_losses: list[float] = []
    for epoch in range(args.epochs):
        for real, latent in dataloader:
            fake = generator(latent)
            # The discriminator: real points are 1, generated ones 0.
            optimizer_d.zero_grad()
            logits = discriminator(torch.cat([real, fake.detach()]))
            targets = torch.cat([torch.ones(len(real), 1), torch.zeros(len(fake), 1)]).to(logits.device)
            d_loss = bce(logits, targets)
            accelerator.backward(d_loss)
            optimizer_d.step()
            # The generator: make the discriminator answer 1 for generated points.
            optimizer_g.zero_grad()
            g_loss = bce(discriminator(fake), torch.ones(len(fake), 1, device=fake.device))
            accelerator.backward(g_loss)
            optimizer_g.step()
        d_losses.append(accelerator.gather(d_loss.detach()).mean().item())
        g_losses.append(accelerator.gather(g_loss.detach()).mean().item())
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            with torch.no_grad():
                distance = moment_distance(generator(probe).float().cpu())
            accelerator.print(f"epoch {epoch}: discriminator loss {d_losses[-1]:.4f} generator loss "
                              f"{g_losses[-1]:.4f} moment distance {distance:.4f}")

    with torch.no_grad():
        generated = generator(probe).float().cpu()
    distance_after = moment_distance(generated)
    accelerator.print(f"generated mean {generated.mean(0).tolist()}, std {generated.std(0).tolist()} "
                      f"(real {REAL_MEAN.tolist()}, {REAL_STD.tolist()})")
    accelerator.print(f"moment distance: {distance_before:.4f} before training, {distance_after:.4f} after")
    if args.result_file and accelerator.is_main_process:
        Path(args.result_file).write_text(json.dumps({
            "num_processes": accelerator.num_processes, "distance_before": distance_before,
            "distance_after": distance_after, "generated_mean": generated.mean(0).tolist(),
            "generated_std": generated.std(0).tolist(), "d_losses": d_losses, "g_losses": g_losses,
        }))
    accelerator.end_training()


if __name__ == "__main__":
    main()
