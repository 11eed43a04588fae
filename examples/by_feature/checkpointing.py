"""Checkpointing and resuming: ``save_state`` every N steps or every epoch, ``load_state`` and
``skip_first_batches`` to continue exactly where a run stopped.

The plait counterpart of HF Accelerate's ``examples/by_feature/checkpointing.py``, on a tiny classifier
and a synthetic sentence-pair-like task (no download):

    python checkpointing.py --checkpointing_steps epoch --output_dir ckpt
    python checkpointing.py --checkpointing_steps epoch --output_dir ckpt --resume_from_checkpoint ckpt/epoch_0
    plait launch --num_processes 2 --cpu checkpointing.py --checkpointing_steps 5 --output_dir ckpt

A run resumed from ``step_<n>`` or ``epoch_<i>`` ends with the same parameters, bit for bit, as the
run that was not interrupted (dropout included: ``save_state`` keeps the random states).
"""

from __future__ import annotations

import argparse

from plait import Accelerator, DataLoaderConfiguration
from plait.utils import set_seed

from synthetic_pairs import (
    checkpoint_path,
    checkpointing_steps_of,
    evaluate,
    get_dataloaders,
    parameters_of,
    prepare_training,
    resume_position,
    split_batch_size,
    training_step,
    write_result,
)


def training_function(config: dict, args: argparse.Namespace) -> None:
    # New Code #
    # With a stateful dataloader, Accelerate's `load_state` makes it resume mid-epoch by itself; without one,
    # `skip_first_batches` (below) skips the batches already trained on.
    dataloader_config = DataLoaderConfiguration(use_stateful_dataloader=args.use_stateful_dataloader)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision, dataloader_config=dataloader_config)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    # New Code #
    # Save every epoch ("epoch"), every n optimizer steps (a number), or never (None).
    checkpointing_steps = checkpointing_steps_of(args.checkpointing_steps)

    # Batches larger than the device takes are accumulated by hand, as in Accelerate's example.
    batch_size, gradient_accumulation_steps = split_batch_size(accelerator, batch_size)

    set_seed(seed)
    # Dropout makes the resumed run depend on the restored random states too.
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, gradient_accumulation_steps,
        num_warmup_steps=2, dropout=0.1,
    )

    # New Code #
    # The optimizer steps taken so far, and the epoch to start from.
    starting_epoch, overall_step, resume_step = 0, 0, None

    # New Code #
    # Load the checkpoint, then work out from its name where training stopped.
    if args.resume_from_checkpoint:
        accelerator.print(f"Resumed from checkpoint: {args.resume_from_checkpoint}")
        accelerator.load_state(args.resume_from_checkpoint)
        starting_epoch, overall_step, resume_step = resume_position(args.resume_from_checkpoint, len(train_dataloader))

    train_losses: list[float] = []
    epochs: list[dict] = []
    for epoch in range(starting_epoch, num_epochs):
        model.train()
        # New Code #
        # Skip the batches the interrupted run had already trained on in this epoch, without loading them.
        # (A stateful dataloader would know its own position: Accelerate's `use_stateful_dataloader`.)
        if resume_step is not None and epoch == starting_epoch and not args.use_stateful_dataloader:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
        else:
            active_dataloader = train_dataloader
        for step, batch in enumerate(active_dataloader):
            outputs, _ = training_step(accelerator, model, optimizer, lr_scheduler, batch, step, gradient_accumulation_steps)
            train_losses.append(float(outputs.loss.detach()))
            # New Code #
            overall_step += 1
            # New Code #
            # Save to `step_<n>` every `checkpointing_steps` steps.
            if isinstance(checkpointing_steps, int) and overall_step % checkpointing_steps == 0:
                accelerator.save_state(checkpoint_path(args.output_dir, f"step_{overall_step}"))

        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)
        epochs.append({"epoch": epoch, **eval_metric})

        # New Code #
        # Save to `epoch_<i>` at the end of every epoch.
        if checkpointing_steps == "epoch":
            accelerator.save_state(checkpoint_path(args.output_dir, f"epoch_{epoch}"))

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "overall_step": overall_step, "train_losses": train_losses,
        "epochs": epochs, "parameters": parameters_of(accelerator, model),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Checkpointing and resuming a training run with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--checkpointing_steps", type=str, default=None,
                        help="Save the state every n steps, or 'epoch' at the end of each epoch.")
    parser.add_argument("--output_dir", type=str, default=".", help="Where the checkpoint folders are written.")
    parser.add_argument("--resume_from_checkpoint", type=str, default=None,
                        help="A checkpoint folder (step_<n> or epoch_<i>) to continue from.")
    parser.add_argument("--use_stateful_dataloader", action="store_true",
                        help="Resume mid-epoch from the dataloader's own saved position instead of skip_first_batches.")
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
