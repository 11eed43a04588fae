"""Train a small GPT-2 language model from its config, the way a transformers user pretrains one with plait.

The model is ``GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, ...))``: built from a config, nothing is
downloaded. The corpus is synthetic: sequences that count up from a random token by a random stride (modulo
the vocabulary), so every token after the second follows from the ones before it and the loss can fall far
below that of guessing (ln 32 = 3.47). The loop has what a real one has: AdamW with a warmup-then-linear
schedule (transformers' ``get_linear_schedule_with_warmup``), gradient accumulation, gradient clipping, bf16
autocast, TensorBoard logging and an evaluation whose per-sample losses are gathered from every process::

    python causal_language_model.py
    python causal_language_model.py --mixed-precision bf16 --with-tracking --project-dir runs
    plait launch --num-processes 2 --cpu causal_language_model.py --batch-size 8
    plait launch --num-processes 2 --cpu --backend fsdp --fsdp-auto-wrap-policy TRANSFORMER_BASED_WRAP \\
        --fsdp-transformer-layer-cls-to-wrap GPT2Block causal_language_model.py --batch-size 8
    plait launch --num-processes 2 --cpu --backend zero --zero-stage 3 causal_language_model.py --batch-size 8

``--batch-size`` is per process: two processes of 8 train on the same 16 sequences per step as one process
of 16, and end with the same losses. The schedule is counted in this process's optimizer steps and stepped
by hand after each real step (``step_scheduler_with_optimizer=False``), so it has the same length on every
backend: DeepSpeed's engine steps the scheduler itself, once per optimizer step.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel, get_linear_schedule_with_warmup

from plait import Accelerator
from plait.utils import set_seed

VOCAB_SIZE = 32


class CountingSequences(Dataset):
    """``size`` sequences of ``length`` tokens, ``(start + i * stride) % VOCAB_SIZE`` with a random start and a
    stride of 1, 2 or 3. The data depend only on ``seed``, so every process builds the same dataset."""

    def __init__(self, size: int, length: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        starts = torch.randint(0, VOCAB_SIZE, (size, 1), generator=generator)
        strides = torch.randint(1, 4, (size, 1), generator=generator)
        self.input_ids = (starts + strides * torch.arange(length)) % VOCAB_SIZE

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                        help="autocast dtype (default: the launcher's or config file's setting, else no)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=2, help="batches per optimizer step")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch and process")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate")
    parser.add_argument("--num-warmup-steps", type=int, default=4, help="optimizer steps of linear warmup")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the gradient norm at this value")
    parser.add_argument("--train-size", type=int, default=512, help="training sequences")
    parser.add_argument("--eval-size", type=int, default=100, help="evaluation sequences")
    parser.add_argument("--seq-len", type=int, default=16, help="tokens per sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-tracking", action="store_true", help="log to TensorBoard under --project-dir")
    parser.add_argument("--project-dir", default="logs", help="where TensorBoard's event files go")
    parser.add_argument("--result-file", default=None, help="write the run's numbers here as JSON (main process)")
    args = parser.parse_args()
    for name in ("gradient_accumulation_steps", "batch_size", "epochs", "train_size", "eval_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: expected 1 or more")
    if args.seq_len < 3:
        parser.error(f"--seq-len {args.seq_len} is not valid: expected at least 3 tokens (start, stride, a guess)")
    return args


def evaluate(accelerator: Accelerator, model: torch.nn.Module, eval_dataloader: DataLoader) -> float:
    """The mean next-token loss over every evaluation sequence, each counted once: the per-sequence losses
    of all processes gathered with ``gather_for_metrics`` (which drops the samples repeated to even out the
    processes' last batches)."""
    model.eval()
    losses = []
    for batch in eval_dataloader:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"]).logits.float()
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
        losses.append(accelerator.gather_for_metrics(per_token.mean(dim=1)))
    model.train()
    return float(torch.cat(losses).mean())


def main() -> None:
    args = parse_args()
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,
        log_with="tensorboard" if args.with_tracking else None,
        project_dir=args.project_dir,
    )
    set_seed(args.seed)

    with accelerator.main_process_first():
        train_dataset = CountingSequences(args.train_size, args.seq_len, seed=1)
        eval_dataset = CountingSequences(args.eval_size, args.seq_len, seed=2)
    train_dataloader = DataLoader(train_dataset, batch_size=args.batch_size, shuffle=True)
    eval_dataloader = DataLoader(eval_dataset, batch_size=32)

    config = GPT2Config(
        vocab_size=VOCAB_SIZE, n_positions=args.seq_len, n_embd=64, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    # transformers picks the loss from the class name, which for GPT-2 does not say "ForCausalLM" (it warns).
    model.loss_type = "ForCausalLM"
    no_decay = ("bias", "ln_")
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ], lr=args.lr)
    # This process's optimizer steps: its share of the batches, one step per `gradient_accumulation_steps`.
    batches_per_process = math.ceil(len(train_dataloader) / accelerator.num_processes)
    steps_per_epoch = math.ceil(batches_per_process / args.gradient_accumulation_steps)
    max_train_steps = steps_per_epoch * args.epochs
    lr_scheduler = get_linear_schedule_with_warmup(optimizer, args.num_warmup_steps, max_train_steps)

    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    if args.with_tracking:
        accelerator.init_trackers("causal_language_model", config={
            k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    # Under fsdp with layer wrapping each GPT2Block is sharded on its own: its class becomes FSDPGPT2Block.
    block_class = type(accelerator.unwrap_model(model).transformer.h[0]).__name__
    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type}, "
                      f"{accelerator.mixed_precision}: {max_train_steps} optimizer steps; {type(model).__name__} "
                      f"of {block_class}s")
    step_losses: list[float] = []
    epoch_losses: list[float] = []
    completed_steps = 0
    micro_losses: list[torch.Tensor] = []
    eval_loss = evaluate(accelerator, model, eval_dataloader)
    accelerator.print(f"before training: eval loss {eval_loss:.4f}")
    for epoch in range(args.epochs):
        model.train()
        for batch in train_dataloader:
            with accelerator.accumulate(model):
                outputs = model(input_ids=batch["input_ids"], labels=batch["input_ids"])
                loss = outputs.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            # Every process's loss, for a number that does not depend on how the batch was split.
            micro_losses.append(accelerator.gather(loss.detach().float()).mean())
            if accelerator.sync_gradients:
                lr_scheduler.step()
                completed_steps += 1
                step_losses.append(float(torch.stack(micro_losses).mean()))
                micro_losses = []
                if args.with_tracking:
                    accelerator.log({"train_loss": step_losses[-1], "lr": lr_scheduler.get_last_lr()[0]},
                                    step=completed_steps)
        eval_loss = evaluate(accelerator, model, eval_dataloader)
        epoch_losses.append(eval_loss)
        accelerator.print(f"epoch {epoch}: train loss {step_losses[-1]:.4f} eval loss {eval_loss:.4f} "
                          f"perplexity {math.exp(eval_loss):.3f}")
        if args.with_tracking:
            accelerator.log({"eval_loss": eval_loss, "perplexity": math.exp(eval_loss)}, step=completed_steps)

    accelerator.print(f"final eval loss {eval_loss:.4f}")
    if args.result_file and accelerator.is_main_process:
        Path(args.result_file).write_text(json.dumps({
            "num_processes": accelerator.num_processes, "distributed_type": str(accelerator.distributed_type),
            "mixed_precision": accelerator.mixed_precision, "completed_steps": completed_steps,
            "step_losses": step_losses, "eval_losses": epoch_losses, "final_eval_loss": eval_loss,
            "prepared_model": type(model).__name__, "block_class": block_class,
        }))
    accelerator.end_training()


if __name__ == "__main__":
    main()
