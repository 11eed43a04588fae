"""GPT-style pretraining of a causal language model: the training loop of HF Accelerate's
``examples/by_feature/megatron_lm_gpt_pretraining.py``, on plait's data-parallel or sharded backends.

plait does not integrate Megatron-LM: ``plait.utils.MegatronLMPlugin(...)`` raises
``plait.NotSupportedError`` (this script checks that it does, and says what to use instead). The same
loop runs unchanged with ``ddp`` (data parallel) or ``fsdp`` (sharded parameters, the closest to
Megatron-LM's model parallelism that plait has):

    python megatron_lm_gpt_pretraining.py --checkpointing_steps 4 --output_dir gpt
    plait launch --num_processes 2 --cpu megatron_lm_gpt_pretraining.py --output_dir gpt
    plait launch --num_processes 2 --cpu --backend fsdp megatron_lm_gpt_pretraining.py --output_dir gpt
    python megatron_lm_gpt_pretraining.py --output_dir gpt2 --resume_from_checkpoint gpt/step_4

A one-block GPT learns a synthetic corpus of counting sentences (no download). Resuming builds the model
under ``init_empty_weights()`` (no memory for weights that ``load_state`` overwrites anyway), as
Accelerate's script does for Megatron-LM checkpoints.
"""

from __future__ import annotations

import argparse
import os

import torch

from plait import Accelerator, DistributedType, NotSupportedError, init_empty_weights
from plait.logging import get_logger
from plait.utils import MegatronLMDummyScheduler, MegatronLMPlugin  # constructing either: NotSupportedError

from synthetic_pairs import accumulate_step, checkpoint_path, grouped_parameters, parameters_of, write_result
from synthetic_text import (
    PretrainedTinyCausalLM,
    evaluate_perplexity,
    get_block_dataloaders,
    get_scheduler,
    log_training_plan,
    save_model,
    start_run,
    update_steps,
)

logger = get_logger(__name__)


def megatron_lm_status() -> str:
    """What plait says when asked for Megatron-LM: the message of the NotSupportedError it raises."""
    try:
        MegatronLMPlugin(tp_degree=2, pp_degree=2, num_micro_batches=2, gradient_clipping=1.0)
    except NotSupportedError as error:
        return str(error)
    raise RuntimeError("plait.utils.MegatronLMPlugin was constructed: expected plait.NotSupportedError")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pretrain a tiny GPT with plait (Megatron-LM's example, without Megatron-LM).")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4, help="Batch size (per device) for training.")
    parser.add_argument("--per_device_eval_batch_size", type=int, default=4, help="Batch size (per device) for evaluation.")
    parser.add_argument("--learning_rate", type=float, default=3e-3, help="Initial learning rate (after warmup).")
    parser.add_argument("--weight_decay", type=float, default=0.0, help="Weight decay to use.")
    parser.add_argument("--num_train_epochs", type=int, default=2, help="Total number of training epochs to perform.")
    parser.add_argument("--max_train_steps", type=int, default=None,
                        help="Total number of training steps to perform. If provided, overrides num_train_epochs.")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="Number of updates steps to accumulate before performing a backward/update pass.")
    parser.add_argument("--lr_scheduler_type", type=str, default="linear",
                        choices=["linear", "cosine", "constant", "constant_with_warmup"], help="The scheduler type to use.")
    parser.add_argument("--num_warmup_steps", type=int, default=2, help="Number of steps for the warmup in the lr scheduler.")
    parser.add_argument("--output_dir", type=str, default=None, help="Where to store the final model.")
    parser.add_argument("--seed", type=int, default=42, help="A seed for reproducible training.")
    parser.add_argument("--block_size", type=int, default=16, help="The training sequences' length, in tokens.")
    parser.add_argument("--checkpointing_steps", type=str, default=None,
                        help="Whether the various states should be saved at the end of every n steps, or 'epoch' for each epoch.")
    parser.add_argument("--resume_from_checkpoint", type=str, default=None,
                        help="If the training should continue from a checkpoint folder.")
    parser.add_argument("--with_tracking", action="store_true", help="Whether to enable experiment trackers for logging.")
    parser.add_argument("--report_to", type=str, default="all",
                        help='The integration to report the results and logs to ("tensorboard", "wandb", "comet_ml"; "all").')
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    megatron_lm = megatron_lm_status()

    accelerator_log_kwargs = {}
    if args.with_tracking:
        accelerator_log_kwargs["log_with"] = args.report_to
        accelerator_log_kwargs["project_dir"] = args.output_dir
    accelerator = Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, **accelerator_log_kwargs)

    start_run(accelerator, logger, args.seed, args.output_dir)
    logger.info(f"Megatron-LM: {megatron_lm}")

    # The corpus, grouped into blocks.
    train_dataloader, eval_dataloader = get_block_dataloaders(
        accelerator, args.block_size, args.per_device_train_batch_size, args.per_device_eval_batch_size
    )

    # A checkpoint to resume from overwrites every weight: build the model without memory for them.
    if args.resume_from_checkpoint is not None:
        with init_empty_weights():
            model = PretrainedTinyCausalLM(max_positions=args.block_size)
        model = model.to_empty(device=accelerator.device)
        resumed_on_meta = True
    else:
        logger.info("Training new model from scratch")
        model = PretrainedTinyCausalLM(max_positions=args.block_size)
        resumed_on_meta = False

    optimizer = torch.optim.AdamW(grouped_parameters(model, args.weight_decay), lr=args.learning_rate)

    max_train_steps_given = args.max_train_steps is not None
    update_steps(args, train_dataloader, args.gradient_accumulation_steps, max_train_steps_given)

    # Accelerate's script uses MegatronLMDummyScheduler under Megatron-LM, which plait never runs.
    if accelerator.distributed_type == DistributedType.MEGATRON_LM:
        lr_scheduler = MegatronLMDummyScheduler(optimizer=optimizer, total_num_steps=args.max_train_steps,
                                                warmup_num_steps=args.num_warmup_steps)
    else:
        lr_scheduler = get_scheduler(
            args.lr_scheduler_type, optimizer=optimizer,
            num_warmup_steps=args.num_warmup_steps * args.gradient_accumulation_steps,
            num_training_steps=args.max_train_steps * args.gradient_accumulation_steps,
        )

    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )

    # The dataloader's length may have changed (it is this process's share now): recompute.
    num_update_steps_per_epoch = update_steps(args, train_dataloader, args.gradient_accumulation_steps, max_train_steps_given)

    checkpointing_steps = args.checkpointing_steps
    if checkpointing_steps is not None and checkpointing_steps.isdigit():
        checkpointing_steps = int(checkpointing_steps)

    if args.with_tracking:
        accelerator.init_trackers("clm_no_trainer", vars(args))

    log_training_plan(logger, accelerator, args, len(train_dataloader.dataset), args.gradient_accumulation_steps)

    completed_steps = 0
    starting_epoch = 0
    resume_step = None
    if args.resume_from_checkpoint:
        accelerator.print(f"Resumed from checkpoint: {args.resume_from_checkpoint}")
        accelerator.load_state(args.resume_from_checkpoint)
        training_difference = os.path.splitext(os.path.basename(os.path.normpath(args.resume_from_checkpoint)))[0]
        if "epoch" in training_difference:
            starting_epoch = int(training_difference.replace("epoch_", "")) + 1
        else:
            # The batches (micro-steps) already trained on, then this epoch's part of them.
            resume_step = int(training_difference.replace("step_", "")) * args.gradient_accumulation_steps
            starting_epoch = resume_step // len(train_dataloader)
            resume_step -= starting_epoch * len(train_dataloader)
    completed_steps = starting_epoch * num_update_steps_per_epoch

    train_losses, evaluations, perplexity = [], [], float("inf")
    for epoch in range(starting_epoch, args.num_train_epochs):
        model.train()
        total_loss = 0.0
        for step, batch in enumerate(train_dataloader):
            # Skip the batches of this epoch that the interrupted run already trained on (Megatron-LM's
            # example reads and drops them; `skip_first_batches` would not even load them).
            if args.resume_from_checkpoint and epoch == starting_epoch and resume_step is not None and step < resume_step:
                if step % args.gradient_accumulation_steps == 0:
                    completed_steps += 1
                continue

            loss = accumulate_step(accelerator, model, optimizer, lr_scheduler, batch)
            total_loss += float(loss.detach())

            if accelerator.sync_gradients:
                completed_steps += 1
                train_losses.append(float(loss.detach()))
                # Save after an optimizer step only (never between the micro-steps of one).
                if isinstance(checkpointing_steps, int) and completed_steps % checkpointing_steps == 0:
                    accelerator.save_state(checkpoint_path(args.output_dir, f"step_{completed_steps}"))
            if completed_steps >= args.max_train_steps:
                break

        perplexity, eval_loss = evaluate_perplexity(accelerator, model, eval_dataloader, args.per_device_eval_batch_size)
        logger.info(f"epoch {epoch}: perplexity: {perplexity} eval_loss: {eval_loss}")
        evaluations.append({"epoch": epoch, "perplexity": perplexity, "eval_loss": float(eval_loss)})

        if args.with_tracking:
            accelerator.log({"perplexity": perplexity, "eval_loss": eval_loss, "train_loss": total_loss / len(train_dataloader),
                             "epoch": epoch, "step": completed_steps}, step=completed_steps)

        if args.checkpointing_steps == "epoch":
            accelerator.save_state(checkpoint_path(args.output_dir, f"epoch_{epoch}"))

    # The consolidated weights (gathered from the shards under fsdp), then the model saved as transformers does.
    state_dict = accelerator.get_state_dict(model)
    save_model(accelerator, model, args.output_dir, state_dict, {"perplexity": perplexity})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
        "megatron_lm": megatron_lm, "megatron_lm_dummy_scheduler": MegatronLMDummyScheduler.__name__ == "MegatronLMDummyScheduler",
        "resumed_on_meta": resumed_on_meta, "completed_steps": completed_steps, "max_train_steps": args.max_train_steps,
        "train_losses": train_losses, "evaluations": evaluations,
        "parameters": parameters_of(accelerator, state_dict=state_dict),
    })
    accelerator.end_training()


if __name__ == "__main__":
    main()
