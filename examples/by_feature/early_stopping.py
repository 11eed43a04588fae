"""Early stopping across processes: a process that wants to stop calls ``accelerator.set_trigger()``, and
every process sees ``accelerator.check_trigger()`` become true at the same step, so that all leave the
training loop together (no process is left waiting in a collective).

The plait counterpart of HF Accelerate's ``examples/by_feature/early_stopping.py``, on a tiny classifier
and a synthetic sentence-pair-like task (no download):

    python early_stopping.py --patience 2
    plait launch --num_processes 2 --cpu early_stopping.py --patience 2 --batch_size 8

Each process judges its own training loss; the first process whose loss has not improved for
``patience`` steps stops them all.
"""

from __future__ import annotations

import argparse

from plait import Accelerator
from plait.utils import set_seed

from synthetic_pairs import evaluate, get_dataloaders, prepare_training, split_batch_size, training_step, write_result


# New Code #
class EarlyStoppingCallback:
    "A callback class that helps with early stopping"

    def __init__(self, min_delta: float = 0, patience: int = 5) -> None:
        self.min_delta = min_delta
        self.patience = patience
        self.counter = 0
        self.lowest_loss = float("inf")

    def check_early_stopping(self, eval_loss: float) -> bool:
        delta = self.lowest_loss - eval_loss
        if delta >= self.min_delta:
            self.lowest_loss = eval_loss
            self.counter = 0
        else:
            self.counter += 1
            if self.counter >= self.patience:
                return True
        return False


def training_function(config: dict, args: argparse.Namespace) -> None:
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])
    # New Code #
    callback = EarlyStoppingCallback(min_delta=args.min_delta, patience=args.patience)

    batch_size, gradient_accumulation_steps = split_batch_size(accelerator, batch_size)

    set_seed(seed)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, gradient_accumulation_steps
    )

    overall_step, stopped_at, triggered_here = 0, None, None
    train_losses, epochs = [], []
    for epoch in range(num_epochs):
        model.train()
        for step, batch in enumerate(train_dataloader):
            _, loss = training_step(accelerator, model, optimizer, lr_scheduler, batch, step, gradient_accumulation_steps)
            overall_step += 1
            train_losses.append(float(loss.detach()))

            # New Code #
            # This process's judgement: set the trigger (for every process) when its loss stopped improving.
            if callback.check_early_stopping(loss.item()):
                accelerator.set_trigger()
                if triggered_here is None:
                    triggered_here = overall_step

            # New Code #
            # True on every process as soon as any one of them set the trigger.
            if accelerator.check_trigger():
                stopped_at = overall_step
                break
        if stopped_at is not None:
            # Leave the epoch loop too (Accelerate's example only leaves the epoch).
            break

        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)
        epochs.append({"epoch": epoch, **eval_metric})

    accelerator.print(f"stopped at step {stopped_at} of {len(train_dataloader) * num_epochs}")
    # Every process's view, gathered for the result file.
    views = accelerator.gather_object([{"rank": accelerator.process_index, "stopped_at": stopped_at,
                                        "triggered_here": triggered_here, "steps": overall_step}])
    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "steps_per_epoch": len(train_dataloader),
        "num_epochs": num_epochs, "processes": views, "train_losses": train_losses, "epochs": epochs,
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Early stopping on every process at once with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--patience", type=int, default=5, help="Steps without improvement before stopping.")
    parser.add_argument("--min_delta", type=float, default=0.0, help="The smallest decrease that counts.")
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
