"""The causal language modelling task the GPT-style by_feature scripts share
(gradient_accumulation_for_autoregressive_models.py, deepspeed_with_config_support.py,
megatron_lm_gpt_pretraining.py), so that each shows only its feature: a synthetic corpus of counting
sentences (:class:`CountingDataset`, no download), a one-block GPT that answers as a transformers causal LM
does, the corpus as padded sentences or as fixed-length blocks (Accelerate's ``group_texts``), transformers'
schedulers, perplexity, and the parts of Accelerate's ``run_clm_no_trainer`` loop that are not the
scripts' features. The result-file helpers are :mod:`synthetic_pairs`'.

Not a script: the scripts beside it import it (``from synthetic_text import ...``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from plait import Accelerator
from plait.utils import set_seed

VOCAB_SIZE = 48
PAD_TOKEN_ID = 0


class CountingDataset(Dataset):
    """A stand-in for a text corpus: "sentences" of 6 to 24 tokens that count up from a random token by a
    random stride (modulo the vocabulary), so the next token is predictable from the ones before.
    Token 0 is padding; the data depend only on ``seed``, never on the global RNG."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.sentences = []
        for _ in range(size):
            length = int(torch.randint(6, 25, (), generator=generator))
            start = int(torch.randint(1, VOCAB_SIZE, (), generator=generator))
            stride = int(torch.randint(1, 4, (), generator=generator))
            self.sentences.append([1 + (start + i * stride) % (VOCAB_SIZE - 1) for i in range(length)])

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> list[int]:
        return self.sentences[index]


def collate_fn(examples: list[list[int]]) -> dict[str, torch.Tensor]:
    """Pad to the longest sentence (+1), then shift: ``labels`` are the next tokens, padding is -100."""
    max_length = max(len(e) for e in examples)
    input_ids = torch.full((len(examples), max_length + 1), PAD_TOKEN_ID, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example)] = torch.tensor(example)
    labels = input_ids[:, 1:].clone()
    labels[labels == PAD_TOKEN_ID] = -100
    return {"input_ids": input_ids[:, :-1], "labels": labels}


class BlockDataset(Dataset):
    """The corpus grouped into blocks (Accelerate's ``group_texts``): every sentence concatenated into one
    stream, cut into blocks of ``block_size`` tokens; ``labels`` are the next tokens."""

    def __init__(self, sentences: Dataset, block_size: int) -> None:
        stream = [token for index in range(len(sentences)) for token in sentences[index]]
        total_length = (len(stream) - 1) // block_size * block_size
        tokens = torch.tensor(stream[: total_length + 1])
        self.input_ids = tokens[:-1].view(-1, block_size)
        self.labels = tokens[1:].view(-1, block_size)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


class CausalLMOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor


class TinyCausalLM(nn.Module):
    """A one-block GPT: token and position embeddings, causal self-attention, an MLP, the LM head.

    ``labels`` are already the next tokens (the collate function shifted them). With ``num_items_in_batch``
    the loss is the sum over the tokens divided by it (transformers' way to weigh every token of an
    accumulated batch equally), else the mean over this batch's tokens.
    """

    def __init__(self, hidden: int = 32, heads: int = 2, max_positions: int = 32) -> None:
        super().__init__()
        self.heads = heads
        self.embed_tokens = nn.Embedding(VOCAB_SIZE, hidden)
        self.embed_positions = nn.Embedding(max_positions, hidden)
        self.attention_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)  # a key bias has no gradient but noise
        self.attention_out = nn.Linear(hidden, hidden)
        self.mlp_norm = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.final_norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, VOCAB_SIZE)

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, num_items_in_batch: int | None = None,
        use_cache: bool = False,
    ) -> CausalLMOutput:
        batch, length = input_ids.shape
        positions = torch.arange(length, device=input_ids.device)
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        q, k, v = self.qkv(self.attention_norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attention_out(attended.transpose(1, 2).reshape(batch, length, -1))
        x = x + self.mlp(self.mlp_norm(x))
        logits = self.lm_head(self.final_norm(x))
        loss = None
        if labels is not None:
            flat_logits, flat_labels = logits.reshape(-1, VOCAB_SIZE).float(), labels.reshape(-1)
            if num_items_in_batch is None:
                loss = nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100)
            else:
                loss = nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum")
                loss = loss / num_items_in_batch
        return CausalLMOutput(loss, logits)


class PretrainedTinyCausalLM(TinyCausalLM):
    """:class:`TinyCausalLM` with transformers' ``save_pretrained`` (its config and its weights)."""

    def save_pretrained(self, save_directory: str, is_main_process: bool = True, save_function=torch.save,
                        state_dict: dict | None = None) -> None:
        if not is_main_process:
            return
        os.makedirs(save_directory, exist_ok=True)
        Path(save_directory, "config.json").write_text(json.dumps({"model_type": "tiny_causal_lm", "vocab_size": VOCAB_SIZE}))
        save_function(self.state_dict() if state_dict is None else state_dict, os.path.join(save_directory, "pytorch_model.bin"))


def get_sentence_dataloaders(accelerator: Accelerator, batch_size: int, eval_batch_size: int, train_size: int = 128,
                             eval_size: int = 30) -> tuple[DataLoader, DataLoader]:
    """Train and eval dataloaders of whole sentences, padded per batch (:func:`collate_fn`); the train one in
    order (Accelerate's gradient accumulation example does not shuffle)."""
    with accelerator.main_process_first():
        train, validation = CountingDataset(train_size, seed=1), CountingDataset(eval_size, seed=2)
    train_dataloader = DataLoader(train, shuffle=False, collate_fn=collate_fn, batch_size=batch_size)
    eval_dataloader = DataLoader(validation, shuffle=False, collate_fn=collate_fn, batch_size=eval_batch_size)
    return train_dataloader, eval_dataloader


def get_block_dataloaders(accelerator: Accelerator, block_size: int, batch_size: int, eval_batch_size: int,
                          train_size: int = 192, eval_size: int = 40) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled) and eval dataloaders of the corpus grouped into blocks of ``block_size`` tokens (the
    main process first, as a tokenizer's cache would want)."""
    with accelerator.main_process_first():
        train_dataset = BlockDataset(CountingDataset(train_size, seed=1), block_size)
        eval_dataset = BlockDataset(CountingDataset(eval_size, seed=2), block_size)
    train_dataloader = DataLoader(train_dataset, shuffle=True, batch_size=batch_size)
    eval_dataloader = DataLoader(eval_dataset, batch_size=eval_batch_size)
    return train_dataloader, eval_dataloader


def get_scheduler(name: str, optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int):
    """transformers' ``get_scheduler`` for "linear", "cosine", "constant" and "constant_with_warmup"."""

    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        if name in ("constant", "constant_with_warmup"):
            return 1.0
        progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
        if name == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return max(0.0, 1.0 - progress)

    if name not in ("linear", "cosine", "constant", "constant_with_warmup"):
        raise ValueError(f"lr_scheduler_type={name!r}: expected linear, cosine, constant or constant_with_warmup")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def evaluate_perplexity(accelerator: Accelerator, model: nn.Module, eval_dataloader: DataLoader,
                        eval_batch_size: int) -> tuple[float, torch.Tensor]:
    """The perplexity and the mean loss over the eval set: each batch's loss repeated once per sample,
    gathered with ``gather_for_metrics`` (which drops the samples repeated to even out the processes)."""
    model.eval()
    losses = []
    for batch in eval_dataloader:
        with torch.no_grad():
            outputs = model(**batch)
        losses.append(accelerator.gather_for_metrics(outputs.loss.repeat(eval_batch_size)))
    losses = torch.cat(losses)
    try:
        eval_loss = torch.mean(losses)
        perplexity = math.exp(eval_loss)
    except OverflowError:
        perplexity = float("inf")
    return perplexity, eval_loss


def start_run(accelerator: Accelerator, logger: logging.LoggerAdapter, seed: int | None, output_dir: str | None) -> None:
    """Accelerate's ``run_clm_no_trainer`` start: logging, every process's state, the seed, ``output_dir``."""
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if seed is not None:
        set_seed(seed)
    if accelerator.is_main_process and output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
    accelerator.wait_for_everyone()


def update_steps(args: argparse.Namespace, train_dataloader: DataLoader, gradient_accumulation_steps: int,
                 max_train_steps_given: bool) -> int:
    """The optimizer steps of an epoch; sets ``args.max_train_steps`` (from the epochs, unless it was given)
    and ``args.num_train_epochs`` (from the steps). Called before ``prepare`` for the scheduler, and again
    after it, when the dataloader is this process's share."""
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / gradient_accumulation_steps)
    if not max_train_steps_given:
        args.max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    args.num_train_epochs = math.ceil(args.max_train_steps / num_update_steps_per_epoch)
    return num_update_steps_per_epoch


def log_training_plan(logger: logging.LoggerAdapter, accelerator: Accelerator, args: argparse.Namespace,
                      num_examples: int, gradient_accumulation_steps: int) -> None:
    """What the run will do, as Accelerate's ``run_clm_no_trainer`` logs it."""
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {num_examples}")
    logger.info(f"  Num Epochs = {args.num_train_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.per_device_train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient Accumulation steps = {gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {args.max_train_steps}")


def save_model(accelerator: Accelerator, model: nn.Module, output_dir: str | None, state_dict: dict,
               results: dict) -> None:
    """The full weights (``accelerator.get_state_dict``'s, gathered from any shards) saved as transformers
    does, and ``all_results.json``, in ``output_dir`` (nothing without one)."""
    if output_dir is None:
        return
    accelerator.wait_for_everyone()
    unwrapped_model = accelerator.unwrap_model(model)
    unwrapped_model.save_pretrained(output_dir, is_main_process=accelerator.is_main_process,
                                    save_function=accelerator.save, state_dict=state_dict)
    if accelerator.is_main_process:
        with open(os.path.join(output_dir, "all_results.json"), "w") as f:
            json.dump(results, f)
