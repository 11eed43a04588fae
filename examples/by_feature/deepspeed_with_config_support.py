"""Training with a DeepSpeed config file that defines the optimizer and the scheduler: the script builds
``DummyOptim`` / ``DummyScheduler`` placeholders, and ``accelerator.prepare`` hands back the ones the
DeepSpeed engine built from the JSON's ``optimizer`` and ``scheduler`` blocks.

The plait counterpart of HF Accelerate's ``examples/by_feature/deepspeed_with_config_support.py``, on a
one-block GPT and a synthetic corpus of counting sentences (no download). With plait's ``zero`` backend
(``pip install plait[zero]``):

    python deepspeed_with_config_support.py --deepspeed_config_file ../deepspeed_config_templates/zero_stage2_config.json --output_dir clm
    plait launch --num_processes 2 --cpu deepspeed_with_config_support.py \\
        --deepspeed_config_file ../deepspeed_config_templates/zero_stage2_config.json --output_dir clm

``--deepspeed_config_file`` passes ``Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=...))``. HF
Accelerate's users give the file to the launcher instead (``accelerate launch --use_deepspeed
--deepspeed_config_file ...``); ``plait launch`` takes the same flags and runs DeepSpeed, but the script does not
see the file there (``accelerator.state.deepspeed_plugin`` is ``None``), passes AdamW next to the file's optimizer
block, and plait refuses the pair: give the file to the script. Without DeepSpeed the same script trains with
``torch.optim.AdamW`` and its own scheduler, on any backend.

The best checkpoint (lowest perplexity) is kept in ``<output_dir>/best_checkpoint``; with
``--load_best_model`` it is loaded at the end and must give back the best perplexity.
"""

from __future__ import annotations

import argparse
import os

import torch

from plait import Accelerator
from plait.logging import get_logger
from plait.utils import DeepSpeedPlugin, DummyOptim, DummyScheduler

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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a tiny causal LM with a DeepSpeed config file and plait.")
    parser.add_argument("--per_device_train_batch_size", type=int, default=5, help="Batch size (per device) for training.")
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
    parser.add_argument("--load_best_model", action="store_true", help="Whether to load the best model at the end of training")
    parser.add_argument("--with_tracking", action="store_true", help="Whether to enable experiment trackers for logging.")
    parser.add_argument("--report_to", type=str, default="all",
                        help='The integration to report the results and logs to ("tensorboard", "wandb", "comet_ml"; "all").')
    # New Code #
    # Accelerate's script gets its DeepSpeed config from `accelerate launch --deepspeed_config_file`; this
    # option passes it as an object instead (Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=...))).
    parser.add_argument("--deepspeed_config_file", type=str, default=None,
                        help="A DeepSpeed JSON, passed as Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=...)).")
    parser.add_argument("--result_file", type=str, default=None, help="Write the run's numbers here (JSON).")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    plugin_kwargs = {}
    if args.deepspeed_config_file is not None:
        plugin_kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=args.deepspeed_config_file)
    accelerator = (
        Accelerator(log_with=args.report_to, project_dir=args.output_dir,
                    gradient_accumulation_steps=args.gradient_accumulation_steps, **plugin_kwargs)
        if args.with_tracking
        else Accelerator(gradient_accumulation_steps=args.gradient_accumulation_steps, **plugin_kwargs)
    )
    start_run(accelerator, logger, args.seed, args.output_dir)

    train_dataloader, eval_dataloader = get_block_dataloaders(
        accelerator, args.block_size, args.per_device_train_batch_size, args.per_device_eval_batch_size
    )
    model = PretrainedTinyCausalLM(max_positions=args.block_size)
    optimizer_grouped_parameters = grouped_parameters(model, args.weight_decay)
    # New Code #
    # The DeepSpeed JSON's optimizer when it has one (a placeholder until prepare), else AdamW.
    deepspeed_plugin = accelerator.state.deepspeed_plugin
    optimizer_cls = (
        torch.optim.AdamW
        if deepspeed_plugin is None or "optimizer" not in deepspeed_plugin.deepspeed_config
        else DummyOptim
    )
    optimizer = optimizer_cls(optimizer_grouped_parameters, lr=args.learning_rate)

    max_train_steps_given = args.max_train_steps is not None
    update_steps(args, train_dataloader, accelerator.gradient_accumulation_steps, max_train_steps_given)

    # New Code #
    # Likewise the scheduler: the JSON's, or our own.
    if deepspeed_plugin is None or "scheduler" not in deepspeed_plugin.deepspeed_config:
        lr_scheduler = get_scheduler(args.lr_scheduler_type, optimizer=optimizer, num_warmup_steps=args.num_warmup_steps,
                                     num_training_steps=args.max_train_steps)
    else:
        lr_scheduler = DummyScheduler(optimizer, total_num_steps=args.max_train_steps,
                                      warmup_num_steps=args.num_warmup_steps)

    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )

    # The dataloader's length may have changed (it is this process's share now): recompute.
    num_update_steps_per_epoch = update_steps(
        args, train_dataloader, accelerator.gradient_accumulation_steps, max_train_steps_given
    )

    checkpointing_steps = args.checkpointing_steps
    if checkpointing_steps is not None and checkpointing_steps.isdigit():
        checkpointing_steps = int(checkpointing_steps)

    if args.with_tracking:
        accelerator.init_trackers("clm_no_trainer", vars(args))

    log_training_plan(logger, accelerator, args, len(train_dataloader.dataset), accelerator.gradient_accumulation_steps)

    completed_steps = 0
    starting_epoch = 0
    resume_step = None
    best_metric = None
    best_metric_checkpoint = None

    # New Code #
    # Resume: the number in `step_<n>` counts optimizer steps; skip that many steps' batches.
    if args.resume_from_checkpoint:
        accelerator.load_state(args.resume_from_checkpoint)
        accelerator.print(f"Resumed from checkpoint: {args.resume_from_checkpoint}")
        training_difference = os.path.splitext(os.path.basename(os.path.normpath(args.resume_from_checkpoint)))[0]
        if "epoch" in training_difference:
            starting_epoch = int(training_difference.replace("epoch_", "")) + 1
            completed_steps = starting_epoch * num_update_steps_per_epoch
        else:
            completed_steps = int(training_difference.replace("step_", ""))
            starting_epoch = completed_steps // num_update_steps_per_epoch
            resume_step = (completed_steps - starting_epoch * num_update_steps_per_epoch) * accelerator.gradient_accumulation_steps

    train_losses, evaluations = [], []
    for epoch in range(starting_epoch, args.num_train_epochs):
        model.train()
        total_loss = 0.0
        if args.resume_from_checkpoint and epoch == starting_epoch and resume_step is not None:
            active_dataloader = accelerator.skip_first_batches(train_dataloader, resume_step)
        else:
            active_dataloader = train_dataloader
        for batch in active_dataloader:
            # Under DeepSpeed, `backward` and `step` are the engine's; it accumulates by itself.
            loss = accumulate_step(accelerator, model, optimizer, lr_scheduler, batch)
            if accelerator.sync_gradients:
                completed_steps += 1
            # The mean loss over the processes.
            step_loss = accelerator.reduce(loss.detach().clone(), reduction="mean").item()
            total_loss += step_loss
            if accelerator.sync_gradients:
                train_losses.append(step_loss)
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

        if isinstance(checkpointing_steps, str) and checkpointing_steps == "epoch":
            accelerator.save_state(os.path.join(args.output_dir, f"epoch_{epoch}"))

        # New Code #
        # Keep the best state so far (overwriting the previous best).
        if best_metric is None or best_metric > perplexity:
            best_metric = perplexity
            best_metric_checkpoint = os.path.join(args.output_dir, "best_checkpoint")
            accelerator.save_state(best_metric_checkpoint, overwrite=True)
            accelerator.print(f"New best metric: {best_metric} at epoch {epoch}")
            accelerator.print(f"best_metric_checkpoint: {best_metric_checkpoint}")

    # New Code #
    # Load the best state back and check that it is the best one.
    if args.load_best_model:
        accelerator.load_state(best_metric_checkpoint)
    perplexity, eval_loss = evaluate_perplexity(accelerator, model, eval_dataloader, args.per_device_eval_batch_size)
    logger.info(f"Best model metrics: perplexity: {perplexity} eval_loss: {eval_loss}")
    if args.load_best_model and perplexity != best_metric:
        raise AssertionError(f"Best metric {best_metric} does not match the metric {perplexity} of the loaded best model.")

    # The full weights (ZeRO-3 partitions gathered), saved as transformers does.
    state_dict = accelerator.get_state_dict(model)
    save_model(accelerator, model, args.output_dir, state_dict, {"perplexity": perplexity, "eval_loss": eval_loss.item()})

    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
        "optimizer_cls": optimizer_cls.__name__, "scheduler_cls": type(lr_scheduler).__name__,
        "prepared_model": type(model).__name__, "completed_steps": completed_steps,
        "max_train_steps": args.max_train_steps, "best_metric": best_metric, "final_perplexity": perplexity,
        "train_losses": train_losses, "evaluations": evaluations,
        "parameters": parameters_of(accelerator, state_dict=state_dict),
    })
    accelerator.end_training()


if __name__ == "__main__":
    main()
