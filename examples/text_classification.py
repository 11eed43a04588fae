"""Fine-tune-style training of a small BERT sequence classifier built from its config (nothing downloaded).

The model is ``BertForSequenceClassification(BertConfig(num_hidden_layers=2, hidden_size=64, ...))``. The
"sentences" are synthetic token ids: neutral words with three sentiment words among them, each positive or
negative, and the label is the majority (a rule the model must learn by looking at the whole sentence).
Sentences have different lengths and are padded per batch, with an attention mask. The loop is a
transformers fine-tuning loop run through plait: AdamW, transformers' linear schedule with warmup, gradient
accumulation (``accelerator.accumulate``), ``clip_grad_norm_``, optional bf16 autocast, TensorBoard logging
(``log_with="tensorboard"``, ``project_dir``) and accuracy over every evaluation sentence
(``gather_for_metrics``)::

    python text_classification.py
    python text_classification.py --mixed-precision bf16 --with-tracking --project-dir runs
    plait launch --num-processes 2 --cpu text_classification.py --batch-size 8

``--batch-size`` is per process: two processes of 8 train as one process of 16. The schedule is written in
HF Accelerate's terms: its length is counted over the whole dataloader before ``prepare``, and the prepared
scheduler steps once per process at each optimizer step, so it ends with the training on any number of
processes.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from transformers import BertConfig, BertForSequenceClassification, get_linear_schedule_with_warmup

from plait import Accelerator
from plait.utils import set_seed

PAD, CLS, SEP = 0, 1, 2
POSITIVE = range(3, 11)
NEGATIVE = range(11, 19)
NEUTRAL = range(19, 64)
VOCAB_SIZE = 64


class SentimentSentences(Dataset):
    """``size`` sentences of 6 to 20 words between [CLS] and [SEP]: neutral words and three sentiment words;
    the label is 1 when most of those are positive. The data depend only on ``seed``."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.sentences: list[list[int]] = []
        self.labels: list[int] = []

        def pick(words: range) -> int:
            return words[int(torch.randint(len(words), (), generator=generator))]

        for _ in range(size):
            length = int(torch.randint(6, 21, (), generator=generator))
            words = [pick(NEUTRAL) for _ in range(length)]
            polarities = torch.randint(0, 2, (3,), generator=generator).tolist()
            places = torch.randperm(length, generator=generator)[:3].tolist()
            for place, positive in zip(places, polarities):
                words[place] = pick(POSITIVE if positive else NEGATIVE)
            self.sentences.append([CLS, *words, SEP])
            self.labels.append(int(sum(polarities) >= 2))

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> tuple[list[int], int]:
        return self.sentences[index], self.labels[index]


def collate(examples: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    """Pad to the longest sentence of the batch; the attention mask hides the padding."""
    longest = max(len(sentence) for sentence, _ in examples)
    input_ids = torch.full((len(examples), longest), PAD, dtype=torch.long)
    for row, (sentence, _) in enumerate(examples):
        input_ids[row, : len(sentence)] = torch.tensor(sentence)
    return {"input_ids": input_ids, "attention_mask": (input_ids != PAD).long(),
            "labels": torch.tensor([label for _, label in examples])}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default=None,
                        help="autocast dtype (default: the launcher's or config file's setting, else no)")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=2, help="batches per optimizer step")
    parser.add_argument("--batch-size", type=int, default=16, help="sentences per batch and process")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    parser.add_argument("--warmup-ratio", type=float, default=0.1, help="the share of the schedule spent warming up")
    parser.add_argument("--max-grad-norm", type=float, default=1.0, help="clip the gradient norm at this value")
    parser.add_argument("--train-size", type=int, default=512)
    parser.add_argument("--eval-size", type=int, default=201)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-tracking", action="store_true", help="log to TensorBoard under --project-dir")
    parser.add_argument("--project-dir", default="logs", help="where TensorBoard's event files go")
    parser.add_argument("--result-file", default=None, help="write the run's numbers here as JSON (main process)")
    args = parser.parse_args()
    for name in ("gradient_accumulation_steps", "batch_size", "epochs", "train_size", "eval_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)} is not valid: expected 1 or more")
    if not 0 <= args.warmup_ratio < 1:
        parser.error(f"--warmup-ratio {args.warmup_ratio} is not valid: expected a share from 0 up to (not) 1")
    return args


def evaluate(accelerator: Accelerator, model: torch.nn.Module, dataloader: DataLoader) -> tuple[float, float, int]:
    """Accuracy and mean loss over every evaluation sentence, each counted once, and how many there were."""
    model.eval()
    correct, losses = [], []
    for batch in dataloader:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        hits, loss = accelerator.gather_for_metrics(((logits.argmax(-1) == batch["labels"]), loss))
        correct.append(hits)
        losses.append(loss)
    model.train()
    correct_all = torch.cat(correct)
    return float(correct_all.float().mean()), float(torch.cat(losses).mean()), len(correct_all)


def main() -> None:
    args = parse_args()
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with="tensorboard" if args.with_tracking else None,
        project_dir=args.project_dir,
    )
    set_seed(args.seed)
    with accelerator.main_process_first():
        train_dataset = SentimentSentences(args.train_size, seed=1)
        eval_dataset = SentimentSentences(args.eval_size, seed=2)
    train_dataloader = DataLoader(train_dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    eval_dataloader = DataLoader(eval_dataset, batch_size=32, collate_fn=collate)

    config = BertConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=32, num_labels=2, pad_token_id=PAD,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    no_decay = ("bias", "LayerNorm.weight")
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ], lr=args.lr)
    # Counted over the whole (unsharded) dataloader: the prepared scheduler steps once per process.
    num_training_steps = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps) * args.epochs
    lr_scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * num_training_steps),
                                                   num_training_steps)
    model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler
    )
    if args.with_tracking:
        accelerator.init_trackers("text_classification", config={
            k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    accelerator.print(f"{accelerator.num_processes} process(es), {accelerator.distributed_type}, "
                      f"{accelerator.mixed_precision}")
    step_losses: list[float] = []
    micro_losses: list[torch.Tensor] = []
    accuracies: list[float] = []
    completed_steps = 0
    for epoch in range(args.epochs):
        for batch in train_dataloader:
            with accelerator.accumulate(model):
                outputs = model(**batch)
                loss = outputs.loss
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            micro_losses.append(accelerator.gather(loss.detach().float()).mean())
            if accelerator.sync_gradients:
                completed_steps += 1
                step_losses.append(float(torch.stack(micro_losses).mean()))
                micro_losses = []
                if args.with_tracking:
                    accelerator.log({"train_loss": step_losses[-1], "lr": lr_scheduler.get_last_lr()[0]},
                                    step=completed_steps)
        accuracy, eval_loss, count = evaluate(accelerator, model, eval_dataloader)
        accuracies.append(accuracy)
        accelerator.print(f"epoch {epoch}: train loss {step_losses[-1]:.4f} eval loss {eval_loss:.4f} "
                          f"accuracy {accuracy:.3f} ({count} sentences)")
        if args.with_tracking:
            accelerator.log({"eval_loss": eval_loss, "accuracy": accuracy}, step=completed_steps)

    accelerator.print(f"final accuracy {accuracies[-1]:.3f}, eval loss {eval_loss:.4f}")
    if args.result_file and accelerator.is_main_process:
        Path(args.result_file).write_text(json.dumps({
            "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "completed_steps": completed_steps, "step_losses": step_losses, "accuracies": accuracies,
            "final_eval_loss": eval_loss, "eval_count": count, "learning_rate": lr_scheduler.get_last_lr()[0],
        }))
    accelerator.end_training()


if __name__ == "__main__":
    main()
