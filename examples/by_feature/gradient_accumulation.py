"""Gradient accumulation with ``Accelerator(gradient_accumulation_steps=...)`` and ``accelerator.accumulate``.

The plait counterpart of HF Accelerate's ``examples/by_feature/gradient_accumulation.py``, on a tiny
classifier and a synthetic sentence-pair-like task (no download):

    python gradient_accumulation.py --gradient_accumulation_steps 2 --batch_size 8
    plait launch --num_processes 2 --cpu gradient_accumulation.py --gradient_accumulation_steps 2 --batch_size 4

Inside ``accelerator.accumulate(model)``, ``backward`` divides the loss by the number of steps, the
gradients are synchronised across processes only on the last micro-step, and ``optimizer.step()`` /
``zero_grad()`` / ``lr_scheduler.step()`` act only then: 2 micro-batches of 8 on 1 process, 2 of 4 on each
of 2 processes, and 1 batch of 16 on 1 process give the same training.
"""

from __future__ import annotations

import argparse

from plait import Accelerator
from plait.utils import set_seed

from synthetic_pairs import (
    evaluate,
    get_dataloaders,
    parameters_of,
    prepare_training,
    refuse_accumulation_on_tpu,
    write_result,
)


def training_function(config: dict, args: argparse.Namespace) -> None:
    # New Code #
    gradient_accumulation_steps = int(args.gradient_accumulation_steps)
    # Initialize the accelerator with the number of micro-steps per optimizer step.
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps
    )
    refuse_accumulation_on_tpu(accelerator, gradient_accumulation_steps)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    set_seed(seed)
    # The schedule counts optimizer steps: one per `gradient_accumulation_steps` batches.
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, gradient_accumulation_steps
    )

    train_losses, epochs, optimizer_steps = [], [], 0
    for epoch in range(num_epochs):
        model.train()
        for batch in train_dataloader:
            # New code #
            # `accumulate` does the bookkeeping: the optimizer, the scheduler and `zero_grad` act on the last
            # micro-step only, and gradients are synchronised across processes only then.
            with accelerator.accumulate(model):
                output = model(**batch)
                loss = output.loss
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            optimizer_steps += int(accelerator.sync_gradients)
            train_losses.append(float(loss.detach()))

        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)
        epochs.append({"epoch": epoch, **eval_metric})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "optimizer_steps": optimizer_steps, "last_lr": lr_scheduler.get_last_lr()[0],
        "train_losses": train_losses, "epochs": epochs, "parameters": parameters_of(accelerator, model),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Gradient accumulation with plait's Accelerator.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    # New Code #
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="The number of minibatches to be ran before gradients are accumulated.")
    parser.add_argument("--num_epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=16, help="The batch size of each process's micro-step.")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    args = parser.parse_args()
    config = {"lr": args.lr, "num_epochs": args.num_epochs, "seed": args.seed, "batch_size": args.batch_size}
    training_function(config, args)


if __name__ == "__main__":
    main()
