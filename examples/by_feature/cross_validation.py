"""K-fold cross validation: one model per fold, ``accelerator.free_memory`` between folds, and the folds'
test predictions averaged into one ensemble.

The plait counterpart of HF Accelerate's ``examples/by_feature/cross_validation.py``, on a tiny classifier
and a synthetic sentence-pair-like task (no download, no scikit-learn: the stratified folds are made here):

    python cross_validation.py --num_folds 3
    plait launch --num_processes 2 --cpu cross_validation.py --num_folds 3 --batch_size 8

The training set is split into ``num_folds`` stratified folds; each fold trains on the others and is
validated on itself; every fold's model predicts the test set (gathered with ``gather_for_metrics``), and
the mean of their logits gives the ensemble's test accuracy and F1.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from plait import Accelerator
from plait.utils import set_seed

from synthetic_pairs import (
    EVAL_BATCH_SIZE,
    accuracy_and_f1,
    evaluate,
    get_datasets,
    parameters_of,
    prepare_training,
    split_batch_size,
    training_step,
    write_result,
)


def stratified_k_fold(labels: torch.Tensor, num_folds: int) -> list[tuple[list[int], list[int]]]:
    """scikit-learn's ``StratifiedKFold(n_splits=num_folds).split`` (no shuffling): each fold takes every
    ``num_folds``-th sample of each class, so that the folds keep the classes' proportions."""
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        fold_of[members] = torch.arange(len(members)) % num_folds
    folds = []
    for fold in range(num_folds):
        valid = (fold_of == fold).nonzero().flatten().tolist()
        train = (fold_of != fold).nonzero().flatten().tolist()
        folds.append((train, valid))
    return folds


def get_fold_dataloaders(
    accelerator: Accelerator, dataset: dict[str, Dataset], train_idxs: list[int], valid_idxs: list[int],
    batch_size: int = 16,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """The train, validation and test dataloaders of one fold."""
    with accelerator.main_process_first():
        datasets = {
            "train": Subset(dataset["train"], train_idxs),
            "validation": Subset(dataset["train"], valid_idxs),
            "test": dataset["validation"],
        }
    train_dataloader = DataLoader(datasets["train"], shuffle=True, batch_size=batch_size)
    eval_dataloader = DataLoader(datasets["validation"], shuffle=False, batch_size=EVAL_BATCH_SIZE)
    test_dataloader = DataLoader(datasets["test"], shuffle=False, batch_size=EVAL_BATCH_SIZE)
    return train_dataloader, eval_dataloader, test_dataloader


def training_function(config: dict, args: argparse.Namespace) -> None:
    # New Code #
    test_predictions = []
    datasets = get_datasets()
    folds = stratified_k_fold(datasets["train"].labels, int(args.num_folds))

    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    lr, num_epochs, seed, batch_size = config["lr"], int(config["num_epochs"]), int(config["seed"]), int(config["batch_size"])

    # Batches larger than the device takes are accumulated by hand, as in Accelerate's example.
    batch_size, gradient_accumulation_steps = split_batch_size(accelerator, batch_size)

    set_seed(seed)
    # New Code #
    # One model per fold; the test set's references are gathered once (the first fold's).
    test_references = []
    fold_results = []
    for i, (train_idxs, valid_idxs) in enumerate(folds):
        train_dataloader, eval_dataloader, test_dataloader = get_fold_dataloaders(
            accelerator, datasets, train_idxs, valid_idxs, batch_size
        )
        model, optimizer, train_dataloader, eval_dataloader, lr_scheduler = prepare_training(
            accelerator, (train_dataloader, eval_dataloader), lr, num_epochs, gradient_accumulation_steps
        )

        train_losses = []
        for epoch in range(num_epochs):
            model.train()
            for step, batch in enumerate(train_dataloader):
                outputs, _ = training_step(
                    accelerator, model, optimizer, lr_scheduler, batch, step, gradient_accumulation_steps
                )
                train_losses.append(float(outputs.loss.detach()))

            eval_metric = evaluate(accelerator, model, eval_dataloader)
            accelerator.print(f"fold {i} epoch {epoch}:", eval_metric)

        # New Code #
        # This fold's model predicts the test set (its logits, to be averaged over the folds).
        # The test dataloader is prepared on its own: the fold's objects are freed below.
        test_dataloader = accelerator.prepare(test_dataloader)
        fold_predictions = []
        for batch in test_dataloader:
            with torch.no_grad():
                outputs = model(**batch)
            predictions, references = accelerator.gather_for_metrics((outputs.logits, batch["labels"]))
            fold_predictions.append(predictions.cpu())
            if i == 0:
                test_references.append(references.cpu())
        test_predictions.append(torch.cat(fold_predictions, dim=0))
        fold_results.append({"fold": i, "train_size": len(train_idxs), "valid_size": len(valid_idxs),
                             "train_losses": train_losses, "validation": eval_metric,
                             "parameters": parameters_of(accelerator, model)})
        # New Code #
        # Drop every reference the accelerator holds to this fold's objects before the next fold.
        model, optimizer = accelerator.free_memory(model, optimizer)

    # New Code #
    # The ensemble: the mean of the folds' logits.
    references = torch.cat(test_references, dim=0)
    preds = torch.stack(test_predictions, dim=0).sum(dim=0).div(int(args.num_folds)).argmax(dim=-1)
    test_metric = accuracy_and_f1(preds, references)
    accelerator.print("Average test metrics from all folds:", test_metric)
    write_result(accelerator, args.result_file, {
        "num_processes": accelerator.num_processes, "folds": fold_results, "test": test_metric,
        "freed": model is None and optimizer is None,
    })
    accelerator.end_training()


def main() -> None:
    parser = argparse.ArgumentParser(description="K-fold cross validation with plait's Accelerator.")
    parser.add_argument("--mixed_precision", type=str, default=None, choices=["no", "fp16", "bf16"],
                        help="Whether to use mixed precision (fp16 or bf16).")
    parser.add_argument("--cpu", action="store_true", help="If passed, will train on the CPU.")
    parser.add_argument("--num_folds", type=int, default=3, help="The number of splits to perform across the dataset")
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
