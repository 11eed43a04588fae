"""Metrics over several processes: each process evaluates its share, and the predictions are gathered
without the samples that were repeated to give every process an equal last batch.

The plait counterpart of HF Accelerate's ``examples/by_feature/multi_process_metrics.py``, on a tiny
classifier and a synthetic sentence-pair-like task (no download):

    plait launch --num_processes 2 --cpu multi_process_metrics.py --batch_size 8

The validation set has 101 samples, so with 2 processes the last batch is padded with repeated samples.
The example drops them by hand (``accelerator.gather``, then a cut to the dataset's length on the last
batch, as Accelerate's example does) and also with ``accelerator.gather_for_metrics``, which does the same
by itself; both give the metrics of exactly the 101 samples.
"""

from __future__ import annotations

import argparse

import torch

from plait import Accelerator
from plait.utils import set_seed

from synthetic_pairs import (
    accuracy_and_f1,
    get_dataloaders,
    parameters_of,
    prepare_training,
    split_batch_size,
    training_step,
    write_result,
)


def training_function(config: dict, args: argparse.Namespace) -> None:
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    batch_size, gradient_accumulation_steps = split_batch_size(accelerator, batch_size)

    set_seed(seed)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, gradient_accumulation_steps
    )

    train_losses, epochs = [], []
    for epoch in range(num_epochs):
        model.train()
        for step, batch in enumerate(train_dataloader):
            _, loss = training_step(accelerator, model, optimizer, lr_scheduler, batch, step, gradient_accumulation_steps)
            train_losses.append(float(loss.detach()))

        model.eval()
        # New Code #
        # By hand: gather every process's predictions, and on the last batch keep only as many as the
        # dataset has left (the rest are the repeated samples that evened out the processes' batches).
        samples_seen = 0
        manual_predictions, manual_references = [], []
        automatic_predictions, automatic_references = [], []
        for step, batch in enumerate(eval_dataloader):
            with torch.no_grad():
                outputs = model(**batch)
            local_predictions = outputs.logits.argmax(dim=-1)
            predictions, references = accelerator.gather((local_predictions, batch["labels"]))
            if accelerator.use_distributed:
                if step == len(eval_dataloader) - 1:
                    predictions = predictions[: len(eval_dataloader.dataset) - samples_seen]
                    references = references[: len(eval_dataloader.dataset) - samples_seen]
                else:
                    samples_seen += references.shape[0]
            manual_predictions.append(predictions.cpu())
            manual_references.append(references.cpu())
            # New Code #
            # The same in one call.
            predictions, references = accelerator.gather_for_metrics((local_predictions, batch["labels"]))
            automatic_predictions.append(predictions.cpu())
            automatic_references.append(references.cpu())
        manual = accuracy_and_f1(torch.cat(manual_predictions), torch.cat(manual_references))
        automatic = accuracy_and_f1(torch.cat(automatic_predictions), torch.cat(automatic_references))
        accelerator.print(f"epoch {epoch}:", manual)
        epochs.append({"epoch": epoch, "gather": manual, "gather_for_metrics": automatic,
                       "same_samples": torch.equal(torch.cat(manual_references), torch.cat(automatic_references))})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "dataset_length": len(eval_dataloader.dataset),
        "eval_batches": len(eval_dataloader), "train_losses": train_losses, "epochs": epochs,
        "parameters": parameters_of(accelerator, model),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Metrics over several processes with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
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
