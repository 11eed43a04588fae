"""Finding the batch size that fits: ``find_executable_batch_size`` calls the training function again
with a smaller batch size (times 0.9) each time it runs out of memory.

The plait counterpart of HF Accelerate's ``examples/by_feature/memory.py``, on a tiny classifier and a
synthetic sentence-pair-like task (no download):

    python memory.py --batch_size 64 --max_device_batch_size 24
    plait launch --num_processes 2 --cpu memory.py --batch_size 64 --max_device_batch_size 24

The tiny model fits any batch, so ``--max_device_batch_size`` stands in for a small GPU: a larger batch per
process raises a real ``torch.OutOfMemoryError`` (``synthetic_pairs.simulated_device_memory``); 0 turns it off.
"""

from __future__ import annotations

import argparse

from plait import Accelerator
from plait.utils import find_executable_batch_size, set_seed

from synthetic_pairs import (
    evaluate,
    get_dataloaders,
    prepare_training,
    simulated_device_memory,
    training_step,
    write_result,
)


def training_function(config: dict, args: argparse.Namespace) -> None:
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])
    attempts: list[int] = []
    results: dict = {}

    # New Code #
    # The training loop, as a function of the batch size only. The decorator calls it with
    # `starting_batch_size`, then again with a smaller batch size each time it runs out of memory.
    @find_executable_batch_size(starting_batch_size=batch_size)
    def inner_training_loop(batch_size: int) -> None:
        # The accelerator comes from the enclosing function; free what it holds from the last attempt.
        nonlocal accelerator
        accelerator.free_memory()
        attempts.append(batch_size)
        accelerator.print(f"trying batch size {batch_size}")

        # Everything is built again inside, so that each attempt starts afresh.
        set_seed(seed)
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
            accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs
        )

        train_losses, epochs = [], []
        for epoch in range(num_epochs):
            model.train()
            for batch in train_dataloader:
                simulated_device_memory(batch, args.max_device_batch_size)
                _, loss = training_step(accelerator, model, optimizer, lr_scheduler, batch)
                train_losses.append(float(loss.detach()))

            eval_metric = evaluate(accelerator, model, eval_dataloader)
            accelerator.print(f"epoch {epoch}:", eval_metric)
            epochs.append({"epoch": epoch, **eval_metric})
        results.update(batch_size=batch_size, train_losses=train_losses, epochs=epochs)

    # New Code #
    # Called with no arguments: the decorator passes the batch size.
    inner_training_loop()
    write_result(accelerator, args.result_file, {"num_processes": accelerator.num_processes, "attempts": attempts,
                                                  **results})
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Finding an executable batch size with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--max_device_batch_size", type=int, default=24,
                        help="The stand-in device's capacity in samples per batch (0: unlimited).")
    parser.add_argument("--num_epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=64, help="The batch size to try first.")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    args = parser.parse_args()
    config = {"lr": args.lr, "num_epochs": args.num_epochs, "seed": args.seed, "batch_size": args.batch_size}
    training_function(config, args)


if __name__ == "__main__":
    main()
