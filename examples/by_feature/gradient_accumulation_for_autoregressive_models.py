"""Gradient accumulation for causal language models, with every token weighted equally: the tokens of a
whole optimizer step (all micro-batches, all processes) are counted first, and each micro-batch's loss
is its sum over tokens divided by that count (``num_items_in_batch``).

The plait counterpart of HF Accelerate's
``examples/by_feature/gradient_accumulation_for_autoregressive_models.py``, on a one-block GPT and a
synthetic corpus of counting sentences of uneven lengths (no download):

    python gradient_accumulation_for_autoregressive_models.py --gradient_accumulation_steps 2 --per_device_batch_size 4
    plait launch --num_processes 2 --cpu gradient_accumulation_for_autoregressive_models.py \\
        --gradient_accumulation_steps 2 --per_device_batch_size 2

Sentences of different lengths make a plain mean per micro-batch weigh tokens unequally; counted this way,
8 sentences per step give the same gradients whether they come as 1 batch of 8, 2 micro-batches of 4, or
2 micro-batches of 2 on each of 2 processes.
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch

from plait import Accelerator
from plait.utils import set_seed

from synthetic_pairs import parameters_of, refuse_accumulation_on_tpu, write_result
from synthetic_text import TinyCausalLM, evaluate_perplexity, get_sentence_dataloaders

EVAL_BATCH_SIZE = 8


def training_function(config: dict, args: argparse.Namespace) -> None:
    # New Code #
    gradient_accumulation_steps = int(args.gradient_accumulation_steps)
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision, gradient_accumulation_steps=gradient_accumulation_steps
    )
    refuse_accumulation_on_tpu(accelerator, gradient_accumulation_steps)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])
    max_grad_norm = config["max_grad_norm"]

    set_seed(seed)
    train_dataloader, eval_dataloader = get_sentence_dataloaders(accelerator, batch_size, EVAL_BATCH_SIZE)
    model = TinyCausalLM().to(accelerator.device)
    optimizer = torch.optim.AdamW(params=model.parameters(), lr=lr)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)  # a constant schedule
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )

    # New Code #
    # The optimizer steps of an epoch, and how many micro-batches the last one has.
    num_samples_in_epoch = len(train_dataloader)
    remainder = num_samples_in_epoch % gradient_accumulation_steps
    remainder = remainder if remainder != 0 else gradient_accumulation_steps
    total_gradient_updates = math.ceil(num_samples_in_epoch / gradient_accumulation_steps)

    train_losses, grad_norms, evaluations = [], [], []
    for epoch in range(num_epochs):
        model.train()
        training_iterator = iter(train_dataloader)
        for update_step in range(total_gradient_updates):
            # New Code #
            # Take this step's micro-batches first, to count their tokens.
            batch_samples = []
            num_batches_in_step = gradient_accumulation_steps if update_step != (total_gradient_updates - 1) else remainder
            for _ in range(num_batches_in_step):
                batch_samples += [next(training_iterator)]
            # The tokens that count (labels not -100), over every micro-batch of every process.
            local_num_items_in_batch = sum([(batch["labels"].ne(-100)).sum() for batch in batch_samples])
            num_items_in_batch = accelerator.gather(local_num_items_in_batch).sum().item()

            losses = []
            for i, batch in enumerate(batch_samples):
                # Synchronise gradients on the last micro-batch only.
                ctx = (
                    model.no_sync
                    if (i < len(batch_samples) - 1 and accelerator.num_processes > 1)
                    else contextlib.nullcontext
                )
                with ctx():
                    outputs = model(**batch, use_cache=False, num_items_in_batch=num_items_in_batch)
                    loss = outputs.loss
                    # `backward` divides by the accumulation steps and DDP averages over the processes:
                    # multiply both back, so that the gradient is the sum over tokens / num_items_in_batch.
                    loss = loss * gradient_accumulation_steps * accelerator.num_processes
                    accelerator.backward(loss)
                    losses.append(loss.detach())

            grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()

            # The step's loss: the mean over every token of the step.
            losses = accelerator.gather(sum(losses)).sum().item() / (accelerator.num_processes * gradient_accumulation_steps)
            grad_norm = grad_norm.detach().item() if isinstance(grad_norm, torch.Tensor) else grad_norm
            accelerator.print(f"epoch {epoch} - update step {update_step}:: grad norm: {grad_norm} ::train loss: {losses}")
            train_losses.append(losses)
            grad_norms.append(grad_norm)

        perplexity, eval_loss = evaluate_perplexity(accelerator, model, eval_dataloader, EVAL_BATCH_SIZE)
        accelerator.print(f"epoch {epoch}:: eval perplexity: {perplexity} eval_loss: {eval_loss}")
        evaluations.append({"epoch": epoch, "perplexity": perplexity, "eval_loss": float(eval_loss)})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "gradient_accumulation_steps": gradient_accumulation_steps,
        "updates_per_epoch": total_gradient_updates, "train_losses": train_losses, "grad_norms": grad_norms,
        "evaluations": evaluations, "parameters": parameters_of(accelerator, model),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Token-weighted gradient accumulation for a causal LM with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="The number of minibatches to be ran before gradients are accumulated.")
    parser.add_argument("--per_device_batch_size", type=int, default=2, help="The size of each minibatch")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--num_epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    args = parser.parse_args()
    config = {"lr": args.lr, "num_epochs": args.num_epochs, "seed": args.seed, "batch_size": args.per_device_batch_size,
              "max_grad_norm": 1.0}
    training_function(config, args)


if __name__ == "__main__":
    main()
