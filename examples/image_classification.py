"""Train a small CNN on CIFAR-shaped images (3 x 32 x 32, 10 classes), checkpointing every N steps and resuming.

The images are synthetic, nothing is downloaded: each class has its own fixed pattern, and an image is its
class's pattern at a random brightness under heavy noise, so a CNN can learn what chance (10%) cannot. The
main process builds the dataset once and caches it in ``--data-dir``; the other processes wait
(``accelerator.main_process_first()``) and read the cache, as they would after a download. Accuracy is
measured on every evaluation image exactly once (``accelerator.gather_for_metrics``)::

    python image_classification.py --checkpointing-steps 10 --output-dir ckpt
    python image_classification.py --output-dir ckpt --resume-from-checkpoint ckpt/step_20
    python image_classification.py --output-dir ckpt --resume-from-checkpoint latest
    plait launch --num-processes 2 --cpu image_classification.py --batch-size 16

A resumed run loads the model, the optimizer, the scheduler and every random state (``load_state``), skips
the batches of the epoch it had already trained on (``skip_first_batches``), and ends with the same
parameters as the run that was not interrupted. ``--batch-size`` is per process: two processes of 16 train
as one process of 32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from plait import Accelerator
from plait.utils import set_seed

CLASSES = 10
CHECKPOINT_NAME = re.compile(r"step_(\d+)")


def build_dataset(size: int, seed: int) -> TensorDataset:
    """``size`` images of the 10 classes: a class's low-resolution pattern, upsampled, at a random brightness
    under Gaussian noise. The patterns are the same for every split; the images depend on ``seed``."""
    patterns = torch.randn(CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(1234))
    patterns = nn.functional.interpolate(patterns, size=(32, 32), mode="bilinear", align_corners=False)
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (size,), generator=generator)
    brightness = 0.5 + torch.rand(size, 1, 1, 1, generator=generator)
    images = brightness * patterns[labels] + 2.0 * torch.randn(size, 3, 32, 32, generator=generator)
    return TensorDataset(images, labels)


def cached_dataset(accelerator: Accelerator, data_dir: str, split: str, size: int, seed: int) -> TensorDataset:
    """The split from ``data_dir``, built and written there first by the main process (the others wait)."""
    path = Path(data_dir, f"synthetic_cifar_{split}_{size}_{seed}.pt")
    with accelerator.main_process_first():
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset = build_dataset(size, seed)
            temporary = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({"images": dataset.tensors[0], "labels": dataset.tensors[1]}, temporary)
            os.replace(temporary, path)  # a reader never sees half a file
        data = torch.load(path, weights_only=True)
    return TensorDataset(data["images"], data["labels"])


class SmallCNN(nn.Module):
    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16 x 16 x 16
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32 x 8 x 8
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),  # 32 x 2 x 2
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(128, CLASSES))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))


def find_checkpoint(value: str, output_dir: str) -> str:
    """``--resume-from-checkpoint``: a checkpoint folder, or ``latest`` for the newest ``step_<n>`` in
    ``output_dir``."""
    if value != "latest":
        if not CHECKPOINT_NAME.fullmatch(os.path.basename(os.path.normpath(value))):
            raise SystemExit(f"--resume-from-checkpoint {value!r}: expected a folder named step_<n> that this script "
                             f"saved, or 'latest' for the newest one in --output-dir")
        return value
    steps = [int(m.group(1)) for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
             if (m := CHECKPOINT_NAME.fullmatch(name))]
    if not steps:
        raise SystemExit(f"--resume-from-checkpoint latest: no step_<n> checkpoint in --output-dir {output_dir!r}; "
                         f"train with --checkpointing-steps N first, or name a checkpoint folder")
    return os.path.join(output_dir, f"step_{max(steps)}")


def evaluate(accelerator: Accelerator, model: nn.Module, dataloader: DataLoader) -> tuple[float, int]:
    """The accuracy over the evaluation set, each image counted once, and how many images that was."""
    model.eval()
    correct, total = 0, 0
    for images, labels in dataloader:
        with torch.no_grad():
            predictions = model(images).argmax(dim=-1)
        predictions, labels = accelerator.gather_for_metrics((predictions, labels))
        correct += int((predictions == labels).sum())
        total += len(labels)
    model.train()
    return correct / total, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None)
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch and process")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--eval-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="data", help="where the main process caches the dataset")
    parser.add_argument("--checkpointing-steps", type=int, default=None, help="save the state every N optimizer steps")
    parser.add_argument("--output-dir", default="checkpoints", help="where the step_<n> checkpoints go")
    parser.add_argument("--resume-from-checkpoint", default=None,
                        help="a step_<n> folder to continue from, or 'latest' for the newest in --output-dir")
    parser.add_argument("--result-file", default=None, help="write the run's numbers here as JSON (main process)")
    args = parser.parse_args()
    for name in ("batch_size", "epochs", "train_size", "eval_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: expected 1 or more")
    if args.checkpointing_steps is not None and args.checkpointing_steps < 1:
        parser.error(f"--checkpointing-steps {args.checkpointing_steps} is not valid: expected 1 or more steps")

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    train_dataset = cached_dataset(accelerator, args.data_dir, "train", args.train_size, seed=1)
    eval_dataset = cached_dataset(accelerator, args.data_dir, "eval", args.eval_size, seed=2)
    train_dataloader = DataLoader(train_dataset, batch_size=args.batch_size, shuffle=True)
    eval_dataloader = DataLoader(eval_dataset, batch_size=64)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    # One cycle over the whole run, in scheduler steps: the prepared scheduler steps once per process each
    # optimizer step (HF Accelerate's rule), so it is counted over the unsharded dataloader.
    lr_scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr,
                                                       total_steps=len(train_dataloader) * args.epochs)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )

    overall_step, starting_epoch, resume_step = 0, 0, 0
    if args.resume_from_checkpoint:
        checkpoint = find_checkpoint(args.resume_from_checkpoint, args.output_dir)
        accelerator.load_state(checkpoint)
        overall_step = int(CHECKPOINT_NAME.fullmatch(os.path.basename(os.path.normpath(checkpoint))).group(1))
        starting_epoch, resume_step = divmod(overall_step, len(train_dataloader))
        accelerator.print(f"resumed from {checkpoint}: epoch {starting_epoch}, batch {resume_step}")

    train_losses: list[float] = []
    accuracies: list[float] = []
    for epoch in range(starting_epoch, args.epochs):
        model.train()
        if epoch == starting_epoch and resume_step:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
        else:
            active_dataloader = train_dataloader
        for images, labels in active_dataloader:
            # A random horizontal flip: the resumed run continues the saved random states.
            flip = torch.rand(len(images), device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = nn.functional.cross_entropy(model(images), labels)
            accelerator.backward(loss)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            overall_step += 1
            train_losses.append(accelerator.gather(loss.detach()).mean().item())
            if args.checkpointing_steps and overall_step % args.checkpointing_steps == 0:
                accelerator.save_state(os.path.join(args.output_dir, f"step_{overall_step}"))
        accuracy, count = evaluate(accelerator, model, eval_dataloader)
        accuracies.append(accuracy)
        accelerator.print(f"epoch {epoch}: train loss {train_losses[-1]:.4f} accuracy {accuracy:.3f} "
                          f"({count} images)")

    accelerator.print(f"final accuracy {accuracies[-1]:.3f} after {overall_step} steps")
    if args.result_file and accelerator.is_main_process:
        state = accelerator.unwrap_model(model).state_dict()
        Path(args.result_file).write_text(json.dumps({
            "num_processes": accelerator.num_processes, "overall_step": overall_step,
            "steps_per_epoch": len(train_dataloader), "train_losses": train_losses, "accuracies": accuracies,
            "eval_count": count, "learning_rate": lr_scheduler.get_last_lr()[0],
            "parameters": {name: tensor.float().flatten().tolist() for name, tensor in state.items()},
            "parameter_norm": math.sqrt(sum(float(t.float().pow(2).sum()) for t in state.values())),
        }))
    accelerator.end_training()


if __name__ == "__main__":
    main()
