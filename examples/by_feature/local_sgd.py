"""Local SGD: each process takes ``local_sgd_steps`` optimizer steps on its own replica without
synchronising gradients, then the replicas' parameters are averaged (``plait.local_sgd.LocalSGD``).

The plait counterpart of HF Accelerate's ``examples/by_feature/local_sgd.py``, on a tiny classifier and a
synthetic sentence-pair-like task (no download):

    plait launch --num_processes 2 --cpu local_sgd.py --local_sgd_steps 4

Fewer all-reduces than plain data parallelism (one per ``local_sgd_steps`` steps instead of one per step);
on leaving the ``with`` block every process holds the same parameters. On one process it changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib

from torch import nn

from plait import Accelerator
from plait.local_sgd import LocalSGD
from plait.utils import set_seed

from synthetic_pairs import (
    accumulate_step,
    evaluate,
    get_dataloaders,
    parameters_of,
    prepare_training,
    refuse_accumulation_on_tpu,
    write_result,
)


def checksum(model: nn.Module) -> str:
    """A digest of the parameters' bytes: equal on two processes only if the parameters are identical."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def training_function(config: dict, args: argparse.Namespace) -> None:
    gradient_accumulation_steps = int(args.gradient_accumulation_steps)
    # New Code #
    local_sgd_steps = args.local_sgd_steps
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps
    )
    refuse_accumulation_on_tpu(accelerator, gradient_accumulation_steps)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    set_seed(seed)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, gradient_accumulation_steps
    )

    train_losses, epochs, diverged = [], [], []
    for epoch in range(num_epochs):
        model.train()
        # New Code #
        # Gradients are not synchronised inside the block; `local_sgd.step()` after each optimizer step
        # averages the parameters every `local_sgd_steps` steps, and leaving the block averages them once more.
        with LocalSGD(
            accelerator=accelerator, model=model, local_sgd_steps=local_sgd_steps, enabled=local_sgd_steps is not None
        ) as local_sgd:
            for step, batch in enumerate(train_dataloader):
                loss = accumulate_step(accelerator, model, optimizer, lr_scheduler, batch)
                # New Code #
                # Count the step; every `local_sgd_steps`-th one averages the replicas.
                local_sgd.step()
                train_losses.append(float(loss.detach()))
                if step == 0:
                    # After one unsynchronised step the replicas differ (with several processes).
                    digests = accelerator.gather_object([checksum(accelerator.unwrap_model(model))])
                    diverged.append(len(set(digests)) > 1)

        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)
        epochs.append({"epoch": epoch, **eval_metric})

    # Every process's parameters, to check that the last average left them identical.
    digests = accelerator.gather_object([checksum(accelerator.unwrap_model(model))])
    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "local_sgd_steps": local_sgd_steps,
        "local_steps": local_sgd.num_steps, "checksums": digests, "diverged_after_first_step": diverged,
        "train_losses": train_losses, "epochs": epochs, "parameters": parameters_of(accelerator, model),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Local SGD with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="The number of minibatches to be ran before gradients are accumulated.")
    # New Code #
    parser.add_argument("--local_sgd_steps", type=int, default=8,
                        help="Number of local SGD steps or None to disable local SGD")
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
