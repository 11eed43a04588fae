"""DDP communication hooks: gradients all-reduced in fp16 or bf16, or compressed by PowerSGD, chosen with
``DistributedDataParallelKwargs(comm_hook=..., comm_wrapper=...)``.

The plait counterpart of HF Accelerate's ``examples/by_feature/ddp_comm_hook.py``, on a tiny classifier
and a synthetic sentence-pair-like task (no download):

    plait launch --num_processes 2 --cpu ddp_comm_hook.py --ddp_comm_hook fp16
    plait launch --num_processes 2 --cpu ddp_comm_hook.py --ddp_comm_hook power_sgd --ddp_comm_wrapper fp16

The hook only changes how gradients travel between processes (backend ``ddp``); on one process nothing
is wrapped and the kwargs handler waits unused, as in HF Accelerate.
"""

from __future__ import annotations

import argparse

from plait import Accelerator
from plait.utils import DDPCommunicationHookType, DistributedDataParallelKwargs, set_seed

from synthetic_pairs import accumulate_step, evaluate, get_dataloaders, parameters_of, prepare_training, write_result


def training_function(config: dict, args: argparse.Namespace) -> None:
    # New Code #
    # The hook and its wrapper, by Accelerate's names, handed to the Accelerator as a kwargs handler.
    ddp_comm_hook_type = DDPCommunicationHookType(args.ddp_comm_hook)
    ddp_comm_wrapper = DDPCommunicationHookType(args.ddp_comm_wrapper)
    ddp_kwargs = DistributedDataParallelKwargs(comm_hook=ddp_comm_hook_type, comm_wrapper=ddp_comm_wrapper)
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision, kwargs_handlers=[ddp_kwargs])
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    set_seed(seed)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
        accelerator, get_dataloaders(accelerator, batch_size), lr, num_epochs
    )
    # What DistributedDataParallel itself reports as its communication hook (nothing on one process).
    logging_data = model._get_ddp_logging_data() if hasattr(model, "_get_ddp_logging_data") else {}
    registered_hook = logging_data.get("comm_hook")

    train_losses, epochs = [], []
    for epoch in range(num_epochs):
        model.train()
        for batch in train_dataloader:
            loss = accumulate_step(accelerator, model, optimizer, lr_scheduler, batch)
            train_losses.append(float(loss.detach()))

        eval_metric = evaluate(accelerator, model, eval_dataloader)
        accelerator.print(f"epoch {epoch}:", eval_metric)
        epochs.append({"epoch": epoch, **eval_metric})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "wrapped": type(model).__name__,
        "comm_hook": registered_hook, "ddp_handler": str(accelerator.ddp_handler.comm_hook),
        "train_losses": train_losses, "epochs": epochs, "parameters": parameters_of(accelerator, model),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="DDP communication hooks with plait's Accelerator.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    # New Code #
    parser.add_argument("--ddp_comm_hook", type=str, default="no",
                        choices=["no", "fp16", "bf16", "power_sgd", "batched_power_sgd"],
                        help="DDP Communication hook to use.")
    parser.add_argument("--ddp_comm_wrapper", type=str, default="no", choices=["no", "fp16", "bf16"],
                        help="DDP Communication wrapper to use (around power_sgd and batched_power_sgd).")
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
