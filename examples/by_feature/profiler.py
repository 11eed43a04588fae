"""Profiling a training loop: ``ProfileKwargs`` (what torch.profiler records) in ``kwargs_handlers``, and
``with accelerator.profile() as prof:`` around the steps; each process writes its own Chrome trace.

The plait counterpart of HF Accelerate's ``examples/by_feature/profiler.py``, on a tiny classifier and a
synthetic sentence-pair-like task (no download):

    python profiler.py --record_shapes --output_trace_dir traces
    plait launch --num_processes 2 --cpu profiler.py --profile_memory --output_trace_dir traces

With ``--output_trace_dir``, process *i* writes ``traces/profile_<i>.json`` (open it in
chrome://tracing or https://ui.perfetto.dev); the main process prints the table of operators.
"""

from __future__ import annotations

import argparse

from plait import Accelerator
from plait.utils import ProfileKwargs, set_seed

from synthetic_pairs import (
    accumulate_step,
    evaluate,
    get_dataloaders,
    prepare_training,
    refuse_accumulation_on_tpu,
    write_result,
)


def training_function(config: dict, args: argparse.Namespace) -> None:
    gradient_accumulation_steps = int(args.gradient_accumulation_steps)
    # New Code #
    # What the profiler records, and where each process's trace goes.
    profile_kwargs = ProfileKwargs(
        record_shapes=args.record_shapes,
        profile_memory=args.profile_memory,
        with_flops=args.with_flops,
        output_trace_dir=args.output_trace_dir,
    )
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision, kwargs_handlers=[profile_kwargs],
                              gradient_accumulation_steps=gradient_accumulation_steps)
    refuse_accumulation_on_tpu(accelerator, gradient_accumulation_steps)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    set_seed(seed)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs, gradient_accumulation_steps
    )

    train_losses, epochs, operators = [], [], []
    for epoch in range(num_epochs):
        model.train()
        # New Code #
        # Profile the epoch's training steps (the trace is written when the block ends).
        with accelerator.profile() as prof:
            for batch in train_dataloader:
                loss = accumulate_step(accelerator, model, optimizer, lr_scheduler, batch)
                train_losses.append(float(loss.detach()))
        # New Code #
        averages = prof.key_averages()
        accelerator.print(
            averages.table(
                sort_by="self_cpu_time_total" if args.cpu or accelerator.device.type == "cpu"
                else f"self_{accelerator.device.type}_time_total",
                row_limit=10 if args.row_limit is None else args.row_limit,
            )
        )
        operators = sorted({event.key for event in averages})

        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)
        epochs.append({"epoch": epoch, **eval_metric})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "operators": operators,
        "train_losses": train_losses, "epochs": epochs,
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="Profiling a training loop with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="The number of minibatches to be ran before gradients are accumulated.")
    # New Code #
    parser.add_argument("--record_shapes", action="store_true", default=False,
                        help="If passed, will record shapes for profiling.")
    parser.add_argument("--profile_memory", action="store_true", default=False, help="If passed, will profile memory.")
    parser.add_argument("--with_flops", action="store_true", default=False, help="If passed, will profile flops.")
    parser.add_argument("--output_trace_dir", type=str, default=None,
                        help="If passed, will save a json trace to the specified path.")
    parser.add_argument("--row_limit", type=int, default=None, help="Rows of the printed table (-1: all).")
    parser.add_argument("--num_epochs", type=int, default=1)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    args = parser.parse_args()
    config = {"lr": args.lr, "num_epochs": args.num_epochs, "seed": args.seed, "batch_size": args.batch_size}
    training_function(config, args)


if __name__ == "__main__":
    main()
