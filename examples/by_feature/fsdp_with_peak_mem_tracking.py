"""Fully sharded data parallel training (``FullyShardedDataParallelPlugin``) with the peak memory of each
epoch's training and evaluation measured, plus checkpointing and resuming.

The plait counterpart of HF Accelerate's ``examples/by_feature/fsdp_with_peak_mem_tracking.py``, on a tiny
classifier and a synthetic sentence-pair-like task (no download). It needs plait's ``fsdp`` backend
(``pip install plait[fsdp]``), which runs PyTorch's FSDP2 on GPUs or on the CPU:

    plait launch --num_processes 2 --cpu fsdp_with_peak_mem_tracking.py --checkpointing_steps 4 --output_dir fsdp
    plait launch --num_processes 2 --cpu fsdp_with_peak_mem_tracking.py --output_dir fsdp2 --resume_from_checkpoint fsdp/step_4

Memory is read from CUDA's allocator when there is a GPU, and as the process's resident memory (RSS,
sampled by a thread) always. Accelerate's example builds its plugin with
``state_dict_config=FullStateDictConfig(...)`` and ``optim_state_dict_config=FullOptimStateDictConfig(...)``
(FSDP1's objects); plait's ``fsdp`` backend takes ``state_dict_type="FULL_STATE_DICT"`` instead, which
this script passes (``--accelerate_state_dict_configs`` passes Accelerate's objects, to see what plait says).
"""

from __future__ import annotations

import argparse
import gc
import os
import threading

import torch

from plait import Accelerator, FullyShardedDataParallelPlugin
from plait.utils import set_seed

from synthetic_pairs import (
    TinyClassifier,
    checkpoint_path,
    checkpointing_steps_of,
    evaluate,
    get_dataloaders,
    grouped_parameters,
    linear_schedule_with_warmup,
    parameters_of,
    resume_position,
    split_batch_size,
    training_step,
    write_result,
)


def b2mb(x: int) -> int:
    """Bytes to MiB."""
    return int(x / 2**20)


def resident_memory() -> int:
    """This process's resident set size in bytes (psutil when installed, else /proc on Linux)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0


# New Code #
# A context manager that tracks the peak memory of the block: the GPU allocator's peak (when there is a
# GPU) and the peak resident memory of the process, sampled by a thread.
class TorchTracemalloc:
    def __enter__(self) -> TorchTracemalloc:
        gc.collect()
        self.begin = self.end = self.peak = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # reset the peak gauge to zero
            self.begin = torch.cuda.memory_allocated()
        self.cpu_begin = resident_memory()
        self.cpu_peak = self.cpu_begin
        self.peak_monitoring = True
        self.monitor = threading.Thread(target=self.peak_monitor_func, daemon=True)
        self.monitor.start()
        return self

    def peak_monitor_func(self) -> None:
        while self.peak_monitoring:
            self.cpu_peak = max(resident_memory(), self.cpu_peak)
            threading.Event().wait(0.001)

    def __exit__(self, *exc: object) -> None:
        self.peak_monitoring = False
        self.monitor.join()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            self.end = torch.cuda.memory_allocated()
            self.peak = torch.cuda.max_memory_allocated()
        self.used = b2mb(self.end - self.begin)
        self.peaked = b2mb(self.peak - self.begin)
        self.cpu_end = resident_memory()
        self.cpu_peak = max(self.cpu_peak, self.cpu_end)
        self.cpu_used = b2mb(self.cpu_end - self.cpu_begin)
        self.cpu_peaked = b2mb(self.cpu_peak - self.cpu_begin)

    def report(self, accelerator: Accelerator, what: str) -> dict[str, int]:
        accelerator.print(f"Memory before entering the {what} : {b2mb(self.begin)}")
        accelerator.print(f"Memory consumed at the end of the {what} (end-begin): {self.used}")
        accelerator.print(f"Peak Memory consumed during the {what} (max-begin): {self.peaked}")
        accelerator.print(f"Total Peak Memory consumed during the {what} (max): {self.peaked + b2mb(self.begin)}")
        accelerator.print(f"CPU Memory before entering the {what} : {b2mb(self.cpu_begin)}")
        accelerator.print(f"CPU Peak Memory consumed during the {what} (max-begin): {self.cpu_peaked}")
        accelerator.print(f"CPU Total Peak Memory consumed during the {what} (max): {b2mb(self.cpu_peak)}")
        return {"total_peak_memory": self.peaked + b2mb(self.begin), "cpu_total_peak_memory": b2mb(self.cpu_peak),
                "cpu_peak_bytes": self.cpu_peak}


def training_function(config: dict, args: argparse.Namespace) -> None:
    # New Code #
    # The FSDP settings: full (unsharded) state dicts for `get_state_dict` and exported weights.
    if args.accelerate_state_dict_configs:
        from torch.distributed.fsdp.fully_sharded_data_parallel import FullOptimStateDictConfig, FullStateDictConfig

        fsdp_plugin = FullyShardedDataParallelPlugin(
            state_dict_config=FullStateDictConfig(offload_to_cpu=False, rank0_only=False),
            optim_state_dict_config=FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=False),
        )
    else:
        fsdp_plugin = FullyShardedDataParallelPlugin(state_dict_type="FULL_STATE_DICT")

    if args.with_tracking:
        accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision, log_with=args.report_to,
                                  project_dir=args.logging_dir, fsdp_plugin=fsdp_plugin)
    else:
        accelerator = Accelerator(fsdp_plugin=fsdp_plugin)
    accelerator.print(accelerator.distributed_type)

    checkpointing_steps = checkpointing_steps_of(args.checkpointing_steps)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    # We need to initialize the trackers we use, and also store our configuration
    if args.with_tracking:
        accelerator.init_trackers("fsdp_glue_no_trainer", vars(args))

    batch_size, gradient_accumulation_steps = split_batch_size(accelerator, batch_size)

    train_dataloader, eval_dataloader = get_dataloaders(accelerator, batch_size)
    set_seed(seed)
    model = TinyClassifier()

    optimizer_grouped_parameters = grouped_parameters(model, 0.003, no_decay=("bias", "LayerNorm.weight"))
    optimizer = torch.optim.AdamW(params=optimizer_grouped_parameters, lr=lr, weight_decay=2e-4)
    lr_scheduler = linear_schedule_with_warmup(
        optimizer, num_warmup_steps=0,
        num_training_steps=(len(train_dataloader) * num_epochs) // gradient_accumulation_steps,
    )
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )

    starting_epoch, overall_step, resume_step = 0, 0, None
    # New Code #
    # Resume from `step_<n>` or `epoch_<i>`: the sharded state is loaded on every process.
    if args.resume_from_checkpoint:
        accelerator.print(f"Resumed from checkpoint: {args.resume_from_checkpoint}")
        accelerator.load_state(args.resume_from_checkpoint)
        starting_epoch, overall_step, resume_step = resume_position(args.resume_from_checkpoint, len(train_dataloader))

    train_losses, epochs = [], []
    for epoch in range(starting_epoch, num_epochs):
        # New Code #
        # context manager to track the peak memory usage during the training epoch
        with TorchTracemalloc() as tracemalloc:
            model.train()
            if args.with_tracking:
                total_loss = 0
            if resume_step is not None and epoch == starting_epoch:
                active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
            else:
                active_dataloader = train_dataloader
            for step, batch in enumerate(active_dataloader):
                _, loss = training_step(
                    accelerator, model, optimizer, lr_scheduler, batch, step, gradient_accumulation_steps
                )
                # We keep track of the loss at each epoch
                if args.with_tracking:
                    total_loss += loss.detach().float()
                train_losses.append(float(loss.detach()))
                overall_step += 1

                if isinstance(checkpointing_steps, int) and overall_step % checkpointing_steps == 0:
                    accelerator.save_state(checkpoint_path(args.output_dir, f"step_{overall_step}"))
        # New Code #
        # Printing the memory usage details such as allocated memory, peak memory, and total memory usage
        train_memory = tracemalloc.report(accelerator, "train")
        if args.with_tracking:
            accelerator.log({"train_total_peak_memory": train_memory["total_peak_memory"]}, step=epoch)

        # New Code #
        # context manager to track the peak memory usage during the evaluation
        with TorchTracemalloc() as tracemalloc:
            eval_metric = evaluate(accelerator, model, eval_dataloader)
            accelerator.print(f"epoch {epoch}:", eval_metric)
            if args.with_tracking:
                accelerator.log({"accuracy": eval_metric["accuracy"], "f1": eval_metric["f1"],
                                 "train_loss": total_loss.item() / len(train_dataloader)}, step=epoch)

            if checkpointing_steps == "epoch":
                accelerator.save_state(checkpoint_path(args.output_dir, f"epoch_{epoch}"))
        eval_memory = tracemalloc.report(accelerator, "eval")
        if args.with_tracking:
            accelerator.log({"eval_total_peak_memory": eval_memory["total_peak_memory"]}, step=epoch)
        epochs.append({"epoch": epoch, **eval_metric, "train_memory": train_memory, "eval_memory": eval_memory})

    # The full parameters, gathered from every process's shards (a collective: every process calls it).
    state_dict = accelerator.get_state_dict(model)
    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
        "prepared_model": type(model).__name__, "overall_step": overall_step,
        "train_losses": train_losses, "epochs": epochs, "parameters": parameters_of(accelerator, state_dict=state_dict),
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="FSDP with peak memory tracking, with plait.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--checkpointing_steps", type=str, default=None,
                        help="Whether the various states should be saved at the end of every n steps, or 'epoch' for each epoch.")
    parser.add_argument("--resume_from_checkpoint", type=str, default=None,
                        help="If the training should continue from a checkpoint folder.")
    parser.add_argument("--with_tracking", action="store_true",
                        help="Whether to load in all available experiment trackers from the environment and use them for logging.")
    parser.add_argument("--report_to", type=str, default="all", help="The trackers for --with_tracking (Accelerate's: wandb).")
    parser.add_argument("--output_dir", type=str, default=".",
                        help="Optional save directory where all checkpoint folders will be stored.")
    parser.add_argument("--logging_dir", type=str, default="logs", help="Location on where to store experiment tracking logs")
    parser.add_argument("--accelerate_state_dict_configs", action="store_true",
                        help="Build the plugin with FullStateDictConfig/FullOptimStateDictConfig, as Accelerate's example does.")
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
