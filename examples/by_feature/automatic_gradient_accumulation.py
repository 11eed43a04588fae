"""Keeping the observed batch size when the device is small: ``find_executable_batch_size`` finds the
batch size that fits, and gradient accumulation makes up the difference
(``accelerator.gradient_accumulation_steps = observed_batch_size // batch_size``).

The plait counterpart of HF Accelerate's ``examples/by_feature/automatic_gradient_accumulation.py``, on a
tiny classifier and a synthetic sentence-pair-like task (no download):

    python automatic_gradient_accumulation.py --batch_size 64 --max_device_batch_size 24
    plait launch --num_processes 2 --cpu automatic_gradient_accumulation.py --batch_size 64 --max_device_batch_size 24

The stand-in for a small GPU is memory.py's (``synthetic_pairs.simulated_device_memory``): more than
``--max_device_batch_size`` samples per process raise a real ``torch.OutOfMemoryError``; 0 turns it off.
"""

from __future__ import annotations

import argparse

from plait import Accelerator
from plait.utils import find_executable_batch_size, set_seed

from synthetic_pairs import (
    accumulate_step,
    evaluate,
    get_dataloaders,
    prepare_training,
    simulated_device_memory,
    write_result,
)


def training_function(config: dict, args: argparse.Namespace) -> None:
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    lr, num_epochs, seed = config["lr"], int(config["num_epochs"]), int(config["seed"])
    observed_batch_size = int(config["batch_size"])
    attempts: list[int] = []
    results: dict = {}

    # New Code #
    # Try the observed batch size first; on each out-of-memory error the decorator retries with a smaller
    # one, and the accumulation steps are set so that each optimizer step still sees about as many samples.
    @find_executable_batch_size(starting_batch_size=int(observed_batch_size))
    def inner_training_loop(batch_size: int) -> None:
        nonlocal accelerator
        # New Code #
        num_gradient_accumulation_steps = observed_batch_size // batch_size
        accelerator.gradient_accumulation_steps = num_gradient_accumulation_steps
        # Free what the accelerator holds from the last attempt.
        accelerator.free_memory()
        attempts.append(batch_size)
        accelerator.print(f"trying batch size {batch_size} with {num_gradient_accumulation_steps} accumulation steps")

        set_seed(seed)
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
            accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, num_gradient_accumulation_steps
        )

        train_losses, epochs, optimizer_steps = [], [], 0
        for epoch in range(num_epochs):
            model.train()
            for batch in train_dataloader:
                simulated_device_memory(batch, args.max_device_batch_size)
                # And perform gradient accumulation (inside `accelerator.accumulate`, as gradient_accumulation.py)
                loss = accumulate_step(accelerator, model, optimizer, lr_scheduler, batch)
                optimizer_steps += int(accelerator.sync_gradients)
                train_losses.append(float(loss.detach()))

            eval_metric = evaluate(accelerator, model, eval_dataloader)
            accelerator.print(f"epoch {epoch}:", eval_metric)
            epochs.append({"epoch": epoch, **eval_metric})
        results.update(batch_size=batch_size, gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
                       optimizer_steps=optimizer_steps, steps_per_epoch=len(train_dataloader),
                       train_losses=train_losses, epochs=epochs)

    # New Code #
    # Called with no arguments: the decorator passes the batch size.
    inner_training_loop()
    write_result(accelerator, args.result_file, {"num_processes": accelerator.num_processes, "attempts": attempts,
                                                  "observed_batch_size": observed_batch_size, **results})
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Automatic gradient accumulation with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--max_device_batch_size", type=int, default=24,
                        help="The stand-in device's capacity in samples per batch (0: unlimited).")
    parser.add_argument("--num_epochs", type=int, default=2)
    # New Code #
    # A large observed batch size, to be sure the (stand-in) device runs out of memory first.
    parser.add_argument("--batch_size", type=int, default=64, help="The observed batch size per process.")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    args = parser.parse_args()
    config = {"lr": args.lr, "num_epochs": args.num_epochs, "seed": args.seed, "batch_size": args.batch_size}
    training_function(config, args)


if __name__ == "__main__":
    main()
