"""Experiment tracking: ``Accelerator(log_with=..., project_dir=...)``, ``accelerator.init_trackers(run, config)``
and ``accelerator.log(values, step=...)``; trackers write from the main process only.

The plait counterpart of HF Accelerate's ``examples/by_feature/tracking.py``, on a tiny classifier and a
synthetic sentence-pair-like task (no download):

    python tracking.py --with_tracking --project_dir logs
    plait launch --num_processes 2 --cpu tracking.py --with_tracking --project_dir logs --report_to tensorboard
    tensorboard --logdir logs

``log_with="all"`` (the default of ``--report_to``) starts every tracker whose library is installed
(``pip install plait[tensorboard]`` for TensorBoard, whose event files go to ``<project_dir>/tracking``).
"""

from __future__ import annotations

import argparse
import os

from plait import Accelerator
from plait.utils import set_seed

from synthetic_pairs import evaluate, get_dataloaders, prepare_training, split_batch_size, training_step, write_result


def training_function(config: dict, args: argparse.Namespace) -> None:
    # New Code #
    # The trackers to start, and the directory they log into.
    if args.with_tracking:
        accelerator = Accelerator(
            cpu=args.cpu, mixed_precision=args.mixed_precision, log_with=args.report_to, project_dir=args.project_dir
        )
    else:
        accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    batch_size, gradient_accumulation_steps = split_batch_size(accelerator, batch_size)

    set_seed(seed)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, gradient_accumulation_steps
    )

    # New Code #
    # The run is named after this file; its configuration is recorded as hyperparameters.
    if args.with_tracking:
        run = os.path.split(__file__)[-1].split(".")[0]
        accelerator.init_trackers(run, config)

    logged = []
    for epoch in range(num_epochs):
        model.train()
        # New Code #
        if args.with_tracking:
            total_loss = 0
        for step, batch in enumerate(train_dataloader):
            outputs, _ = training_step(accelerator, model, optimizer, lr_scheduler, batch, step, gradient_accumulation_steps)
            # New Code #
            # The loss of the batch (before its division by the accumulation steps).
            if args.with_tracking:
                total_loss += outputs.loss.detach().float()

        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)

        # New Code #
        # One point per epoch for each value (on the main process only).
        if args.with_tracking:
            values = {
                "accuracy": eval_metric["accuracy"],
                "f1": eval_metric["f1"],
                "train_loss": total_loss.item() / len(train_dataloader),
                "epoch": epoch,
            }
            accelerator.log(values, step=epoch)
            logged.append(values)

    # New Code #
    # `end_training` finishes every tracker's run (TensorBoard flushes and closes its event file).
    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "run": "tracking", "logging_dir": accelerator.logging_dir,
        "config": config, "logged": logged,
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Experiment tracking with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    # New Code #
    parser.add_argument("--with_tracking", action="store_true",
                        help="Whether to load in all available experiment trackers from the environment and use them for logging.")
    parser.add_argument("--report_to", type=str, default="all",
                        help='The trackers to log to ("tensorboard", "wandb", "comet_ml"...); "all": every installed one.')
    parser.add_argument("--project_dir", type=str, default="logs",
                        help="Location on where to store experiment tracking logs` and relevent project information")
    parser.add_argument("--num_epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    args = parser.parse_args()
    config = {"lr": args.lr, "num_epochs": args.num_epochs, "seed": args.seed, "batch_size": args.batch_size}
    training_function(config, args)


if __name__ == "__main__":
    main()
