"""A real training job: a small MLP classifier on a synthetic, learnable dataset.

Run it as any plait script: ``python examples/train.py`` (one process), with
options ``--mixed-precision bf16``, ``--gradient-accumulation-steps 4``,
``--checkpoint-dir DIR`` (saves every epoch) and ``--resume`` (continues from the
newest complete checkpoint, exactly where it stopped).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator, ProjectConfiguration, set_seed


def make_dataset(n: int = 4096, features: int = 20, classes: int = 4) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    centers = torch.randn(classes, features, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    inputs = centers[labels] + torch.randn(n, features, generator=generator)
    return TensorDataset(inputs, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"])
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    set_seed(0)
    project = ProjectConfiguration(project_dir=args.checkpoint_dir, automatic_checkpoint_naming=True, total_limit=2)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        project_config=project,
    )
    dataset = make_dataset()
    train = DataLoader(dataset, batch_size=args.batch_size, shuffle=True)
    model = nn.Sequential(nn.Linear(20, 128), nn.ReLU(), nn.Dropout(0.1), nn.Linear(128, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train))
    model, optimizer, train, scheduler = accelerator.prepare(model, optimizer, train, scheduler)

    start_epoch = 0
    if args.resume and args.checkpoint_dir:
        accelerator.load_state()
        start_epoch = train.epoch
        accelerator.print(f"resumed at epoch {start_epoch}")

    for epoch in range(start_epoch, args.epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        for inputs, labels in train:
            with accelerator.accumulate(model):
                logits = model(inputs)
                loss = nn.functional.cross_entropy(logits, labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            predictions, targets = accelerator.gather_for_metrics((logits.argmax(-1), labels))
            correct += int((predictions == targets).sum())
            total += len(targets)
            loss_sum += loss.item() * len(targets)
        accelerator.print(f"epoch {epoch}: loss {loss_sum / total:.4f} accuracy {correct / total:.3f}")
        if args.checkpoint_dir:
            accelerator.save_state()
    accelerator.end_training()
    if correct / total < 0.9:
        raise SystemExit(f"training did not learn: accuracy {correct / total:.3f}")


if __name__ == "__main__":
    main()
