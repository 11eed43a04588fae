"""Schedule-free optimization: ``schedulefree.AdamWScheduleFree`` needs no learning-rate scheduler, only
``optimizer.train()`` before training steps and ``optimizer.eval()`` before evaluating (the prepared
optimizer forwards both).

The plait counterpart of HF Accelerate's ``examples/by_feature/schedule_free.py``, on a tiny classifier and
a synthetic sentence-pair-like task (no download). It needs the ``schedulefree`` library
(``pip install schedulefree``); without it, it stops with an ImportError saying so, as Accelerate's does.

    python schedule_free.py
    plait launch --num_processes 2 --cpu schedule_free.py --batch_size 8
"""

from __future__ import annotations

import argparse

from plait import Accelerator
from plait.utils import is_schedulefree_available, set_seed

from synthetic_pairs import (
    TinyClassifier,
    evaluate,
    get_dataloaders,
    parameters_of,
    split_batch_size,
    training_step,
    write_result,
)

# New Code #
if is_schedulefree_available():
    import schedulefree
else:
    raise ImportError(
        "This example requires the `schedulefree` library. Please install it with `pip install schedulefree`"
    )


def training_function(config: dict, args: argparse.Namespace) -> None:
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    batch_size, gradient_accumulation_steps = split_batch_size(accelerator, batch_size)

    set_seed(seed)
    train_dataloader, eval_dataloader = get_dataloaders(accelerator, batch_size)
    model = TinyClassifier().to(accelerator.device)
    # New Code #
    # The optimizer warms up by itself; there is no scheduler to prepare.
    optimizer = schedulefree.AdamWScheduleFree(model.parameters(), lr=lr, warmup_steps=args.warmup_steps)
    model, optimizer, train_dataloader, eval_dataloader = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader
    )

    train_losses, epochs = [], []
    for epoch in range(num_epochs):
        model.train()
        # New Code #
        # Schedule-free optimizers keep two sets of weights: switch to the training ones.
        optimizer.train()
        for step, batch in enumerate(train_dataloader):
            # No scheduler to step.
            _, loss = training_step(accelerator, model, optimizer, None, batch, step, gradient_accumulation_steps)
            train_losses.append(float(loss.detach()))

        # New Code #
        # ... and to the averaged ones, which are the ones to evaluate (and save); `evaluate` calls `model.eval()`.
        optimizer.eval()
        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)
        epochs.append({"epoch": epoch, **eval_metric})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "optimizer": type(getattr(optimizer, "optimizer", optimizer)).__name__,
        "train_mode": bool(optimizer.param_groups[0].get("train_mode", False)),
        "train_losses": train_losses, "epochs": epochs, "parameters": parameters_of(accelerator, model),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Schedule-free AdamW with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--warmup_steps", type=int, default=4, help="The optimizer's warm-up steps.")
    parser.add_argument("--num_epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    args = parser.parse_args()
    config = {"lr": args.lr, "num_epochs": args.num_epochs, "seed": args.seed, "batch_size": args.batch_size}
    training_function(config, args)


if __name__ == "__main__":
    main()
