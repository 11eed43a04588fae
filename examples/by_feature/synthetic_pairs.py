"""What the by_feature scripts share besides their features (as HF Accelerate's scripts import
``mocked_dataloaders`` from ``accelerate.test_utils.training``). The classifier task: a stand-in for GLUE/MRPC
(:class:`PairDataset`), a tiny classifier that answers as a transformers sequence classifier does, the
dataloaders, transformers' linear schedule, MRPC's metrics. And for every script, the GPT-style ones too: the
training steps of Accelerate's loops, weight-decay groups, checkpoint names, and the result file the tests
read (``--result_file``).

Not a script: the scripts beside it import it (``from synthetic_pairs import ...``); the folder of the
script that runs is on ``sys.path`` under ``python script.py``, ``plait launch`` and torchrun.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from plait import Accelerator, DistributedType

MAX_GPU_BATCH_SIZE = 16
EVAL_BATCH_SIZE = 32
FEATURES = 16


class PairDataset(Dataset):
    """A stand-in for GLUE/MRPC: two "sentences" of 8 features each and whether they paraphrase each other
    (a fixed noisy linear rule). The data depend only on ``seed``, never on the global RNG."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        teacher = torch.randn(FEATURES, generator=torch.Generator().manual_seed(1234))
        self.inputs = torch.randn(size, FEATURES, generator=generator)
        noise = 0.3 * torch.randn(size, generator=generator)
        self.labels = (self.inputs @ teacher + noise > 0).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"inputs": self.inputs[index], "labels": self.labels[index]}


class ClassifierOutput(NamedTuple):
    loss: torch.Tensor | None
    logits: torch.Tensor


class TinyClassifier(nn.Module):
    """``model(**batch)`` returns ``.loss`` and ``.logits``, as a transformers sequence classifier does."""

    def __init__(self, hidden: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(FEATURES, hidden), nn.GELU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden, 2)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> ClassifierOutput:
        logits = self.classifier(self.encoder(inputs))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return ClassifierOutput(loss, logits)


def get_datasets(train_size: int = 256, validation_size: int = 101) -> dict[str, PairDataset]:
    """The "train" (seed 1) and "validation" (seed 2; 101 samples: the last batch is uneven) splits."""
    return {"train": PairDataset(train_size, seed=1), "validation": PairDataset(validation_size, seed=2)}


def get_dataloaders(accelerator: Accelerator, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """The train (256 samples, shuffled) and validation (101: the last batch is uneven) dataloaders."""
    with accelerator.main_process_first():
        datasets = get_datasets()
    train_dataloader = DataLoader(datasets["train"], shuffle=True, batch_size=batch_size)
    eval_dataloader = DataLoader(datasets["validation"], shuffle=False, batch_size=EVAL_BATCH_SIZE)
    return train_dataloader, eval_dataloader


def split_batch_size(accelerator: Accelerator, batch_size: int) -> tuple[int, int]:
    """Accelerate's examples' manual accumulation: a batch larger than ``MAX_GPU_BATCH_SIZE`` is taken as
    several of that size. The batch size per step, and the steps to accumulate."""
    if batch_size > MAX_GPU_BATCH_SIZE and accelerator.distributed_type != DistributedType.XLA:
        return MAX_GPU_BATCH_SIZE, batch_size // MAX_GPU_BATCH_SIZE
    return batch_size, 1


def refuse_accumulation_on_tpu(accelerator: Accelerator, gradient_accumulation_steps: int) -> None:
    """Accelerate's examples' check: their gradient accumulation is not supported on TPUs."""
    if accelerator.distributed_type == DistributedType.XLA and gradient_accumulation_steps > 1:
        raise NotImplementedError(
            "Gradient accumulation on TPUs is currently not supported. Pass `gradient_accumulation_steps=1`"
        )


def linear_schedule_with_warmup(optimizer: torch.optim.Optimizer, num_warmup_steps: int, num_training_steps: int):
    """transformers' ``get_linear_schedule_with_warmup``, written out."""

    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def prepare_training(
    accelerator: Accelerator, dataloaders: tuple[DataLoader, DataLoader], lr: float, num_epochs: int,
    gradient_accumulation_steps: int = 1, num_warmup_steps: int = 0, dropout: float = 0.0,
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader, DataLoader, torch.optim.lr_scheduler.LRScheduler]:
    """A :class:`TinyClassifier`, AdamW and the linear schedule (which counts optimizer steps: one per
    ``gradient_accumulation_steps`` batches), passed through ``accelerator.prepare`` with the train and
    validation ``dataloaders``. Call ``set_seed`` first: the model's initial weights come from the global RNG."""
    train_dataloader, eval_dataloader = dataloaders
    model = TinyClassifier(dropout=dropout).to(accelerator.device)
    optimizer = torch.optim.AdamW(params=model.parameters(), lr=lr)
    lr_scheduler = linear_schedule_with_warmup(
        optimizer, num_warmup_steps=num_warmup_steps,
        num_training_steps=(len(train_dataloader) * num_epochs) // gradient_accumulation_steps,
    )
    return accelerator.prepare(model, optimizer, train_dataloader, eval_dataloader, lr_scheduler)


def simulated_device_memory(batch: dict[str, torch.Tensor], max_device_batch_size: int) -> None:
    """The stand-in for a small GPU (this tiny model fits any batch on any machine): a batch larger than it
    holds raises the out-of-memory error CUDA raises."""
    size = len(batch["labels"])
    if max_device_batch_size and size > max_device_batch_size:
        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate a batch of {size} samples (simulated: this example's "
            f"stand-in device holds at most {max_device_batch_size} samples per batch)"
        )


def training_step(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None, batch: dict[str, torch.Tensor], step: int = 0,
    gradient_accumulation_steps: int = 1,
) -> tuple[ClassifierOutput, torch.Tensor]:
    """One training step of Accelerate's ``nlp_example`` loop, accumulating by hand: the loss divided by
    ``gradient_accumulation_steps``, and the optimizer (and the scheduler, unless None) stepping on every
    ``gradient_accumulation_steps``-th batch (``step`` counts the epoch's batches). The model's outputs, and
    the loss that went backward."""
    outputs = model(**batch)
    loss = outputs.loss / gradient_accumulation_steps
    accelerator.backward(loss)
    if step % gradient_accumulation_steps == 0:
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        optimizer.zero_grad()
    return outputs, loss


def accumulate_step(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler, batch: dict[str, torch.Tensor],
) -> torch.Tensor:
    """One micro-step inside ``accelerator.accumulate(model)`` (gradient_accumulation.py shows it): the
    optimizer, the scheduler and ``zero_grad`` act on the accelerator's last micro-step only. The loss."""
    with accelerator.accumulate(model):
        outputs = model(**batch)
        loss = outputs.loss
        accelerator.backward(loss)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
    return loss


def evaluate(accelerator: Accelerator, model: nn.Module, eval_dataloader: DataLoader) -> dict[str, float]:
    """The model's predictions on every validation sample, gathered once each (``gather_for_metrics`` drops
    the samples repeated to even out the processes' last batches), scored by :func:`accuracy_and_f1`."""
    model.eval()
    all_predictions, all_references = [], []
    for batch in eval_dataloader:
        with torch.no_grad():
            outputs = model(**batch)
        predictions = outputs.logits.argmax(dim=-1)
        predictions, references = accelerator.gather_for_metrics((predictions, batch["labels"]))
        all_predictions.append(predictions.cpu())
        all_references.append(references.cpu())
    return accuracy_and_f1(torch.cat(all_predictions), torch.cat(all_references))


def accuracy_and_f1(predictions: torch.Tensor, references: torch.Tensor) -> dict[str, float]:
    """GLUE/MRPC's metrics, computed here instead of by the ``evaluate`` library."""
    true_positives = int(((predictions == 1) & (references == 1)).sum())
    predicted, actual = int((predictions == 1).sum()), int((references == 1).sum())
    f1 = 2 * true_positives / (predicted + actual) if predicted + actual else 0.0
    return {"accuracy": float((predictions == references).double().mean()), "f1": f1, "count": len(references)}


def grouped_parameters(model: nn.Module, weight_decay: float,
                       no_decay: tuple[str, ...] = ("bias", "norm.weight")) -> list[dict]:
    """The optimizer's parameter groups, as transformers' examples make them: weight decay for all but the
    parameters whose names contain one of ``no_decay`` (the biases and the norms' weights)."""
    return [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
    ]


def checkpointing_steps_of(value: str | None) -> int | str | None:
    """``--checkpointing_steps``: "epoch", a number of steps, or None (never)."""
    if value is None or value == "epoch":
        return value
    if value.isdigit():
        return int(value)
    raise ValueError(f"Argument `checkpointing_steps` must be either a number or `epoch`. `{value}` passed.")


def resume_position(checkpoint: str, steps_per_epoch: int) -> tuple[int, int, int | None]:
    """Where the run saved in ``checkpoint`` (``.../step_<n>`` or ``.../epoch_<i>``) stopped: the epoch to
    start from, the steps done, and the batches of that epoch to skip (None after a whole epoch)."""
    training_difference = os.path.splitext(os.path.basename(os.path.normpath(checkpoint)))[0]
    if "epoch" in training_difference:
        starting_epoch = int(training_difference.replace("epoch_", "")) + 1
        return starting_epoch, starting_epoch * steps_per_epoch, None
    overall_step = int(training_difference.replace("step_", ""))
    starting_epoch = overall_step // steps_per_epoch
    return starting_epoch, overall_step, overall_step - starting_epoch * steps_per_epoch


def checkpoint_path(output_dir: str | None, name: str) -> str:
    """Where the checkpoint ``name`` (``step_<n>``, ``epoch_<i>``) is saved: in ``output_dir`` when given."""
    return name if output_dir is None else os.path.join(output_dir, name)


def parameters_of(accelerator: Accelerator, model: nn.Module | None = None,
                  state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, list[float]]:
    """The model's parameters as lists of numbers, for the result file; from ``state_dict`` when given (the
    full one ``accelerator.get_state_dict`` gathers from fsdp's or DeepSpeed's shards)."""
    state = accelerator.unwrap_model(model).state_dict() if state_dict is None else state_dict
    return {name: tensor.detach().float().cpu().flatten().tolist() for name, tensor in state.items()}


def write_result(accelerator: Accelerator, path: str | None, result: dict) -> None:
    """The main process writes the run's numbers as JSON (what the tests read)."""
    if path and accelerator.is_main_process:
        Path(path).write_text(json.dumps(result))
