"""``prepare`` under ``zero``: each model with its own optimizer and schedulers, one DeepSpeed engine per model.

In one ``prepare`` call, each optimizer goes with the model that holds its parameters,
and each scheduler with its optimizer's model; ``deepspeed.initialize`` then builds one
engine per model from the active zero config (:meth:`ZeroOptions.select`). Several
``prepare`` calls each build their engines the same way. A model with no optimizer (a
frozen teacher or reference model) is an inference engine under ZeRO stage 3, its
parameters partitioned as HF Accelerate's does; under stages 1 and 2 DeepSpeed would
have nothing to shard, so it is only placed on the device (and runs the mixed-precision
forward). What one engine cannot hold is refused with the fix first: an optimizer over
two models' parameters, two optimizers over one model's. A ``DummyOptim`` and ``DummyScheduler``
(HF Accelerate's) stand for the DeepSpeed config's ``"optimizer"`` and ``"scheduler"`` blocks, which the engine
builds (:mod:`plait_zero.dummies`). Imported from hook bodies only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from plait.errors import ConfigError
from plait.training import AcceleratedScheduler, PreparedObjects, patch_forward
from plait_zero import dummies
from plait_zero.deepspeed_config import build_config
from plait_zero.engine import EngineScheduler, ZeroOptimizer, ZeroPrecision, ensure_comm, import_deepspeed

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait_zero.options import ZeroOptions


def _micro_batch_size(dataloaders: Sequence[Any]) -> int | None:
    for loader in dataloaders:
        size = getattr(loader, "per_process_batch_size", None) or getattr(loader, "batch_size", None)
        if size:
            return int(size)
    return None


class _Pair:
    """One model of this ``prepare`` call, its optimizer and schedulers."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.optimizer: Any = None
        self.optimizer_index = -1
        self.schedulers: list[Any] = []


def _pair(precision: ZeroPrecision, prepared: Any, models: Sequence[torch.nn.Module], optimizers: Sequence[Any],
          schedulers: Sequence[Any]) -> tuple[list[_Pair], list[tuple[Any, Any]], list[tuple[Any, Any]]]:
    """Each new model with its optimizer and schedulers; the objects already prepared, mapped to themselves;
    the schedulers of optimizers prepared by an earlier call, with their prepared optimizer."""
    again: list[tuple[Any, Any]] = [(m, m) for m in models if m in prepared]
    pairs = [_Pair(m) for m in models if m not in prepared]
    holder = {id(p): i for i, pair in enumerate(pairs) for p in pair.model.parameters()}
    built = precision.owners()
    for k, optimizer in enumerate(optimizers):
        if isinstance(optimizer, ZeroOptimizer) and precision.owns(optimizer.engine):
            again.append((optimizer, optimizer))
            continue
        params = dummies.parameters(optimizer)
        if not params:
            raise ConfigError(f"Give optimizer {k} ({type(optimizer).__name__}) some parameters: it holds none")
        owners = sorted({holder[id(p)] for p in params if id(p) in holder})
        earlier = {id(built[id(p)]) for p in params if id(p) not in holder and id(p) in built}
        if len(owners) + len(earlier) > 1:
            what = f"the {_ordinals(owners)} models of this prepare() call" if owners else "two models"
            if owners and earlier:
                what += " and a model prepared earlier"
            raise ConfigError(
                f"Give each model its own optimizer, or put the models in one torch.nn.Module (torch.nn.ModuleDict) "
                f"and prepare that: optimizer {k} ({type(optimizer).__name__}) holds parameters of {what}, and "
                f"backend 'zero' builds one DeepSpeed engine per model, with one optimizer"
            )
        if earlier:
            raise ConfigError(
                f"Pass optimizer {k} ({type(optimizer).__name__}) to the same prepare() call as its model: backend "
                f"'zero' builds each DeepSpeed engine from a model and its optimizer together, and this optimizer's "
                f"model was prepared without it"
            )
        if not owners or any(id(p) not in holder for p in params):
            raise ConfigError(
                f"Pass the model whose parameters optimizer {k} ({type(optimizer).__name__}) holds to the same "
                f"prepare() call: backend 'zero' builds each DeepSpeed engine from a model and its optimizer "
                f"together, and no model passed here holds {'these parameters' if not owners else 'all of them'}"
            )
        pair = pairs[owners[0]]
        if pair.optimizer is not None:
            raise ConfigError(
                f"Use one optimizer with a param group per part of the {_ordinals(owners)} model "
                f"(torch.optim.AdamW([{{'params': ...}}, {{'params': ..., 'lr': ...}}])), or split the model into "
                f"two modules: optimizers {pair.optimizer_index} and {k} both hold its parameters, and a DeepSpeed "
                f"engine takes one optimizer"
            )
        pair.optimizer, pair.optimizer_index = optimizer, k
    by_optimizer = {id(pair.optimizer): pair for pair in pairs if pair.optimizer is not None}
    later: list[tuple[Any, Any]] = []
    for k, scheduler in enumerate(schedulers):
        inner = getattr(scheduler, "optimizer", None)
        if isinstance(scheduler, AcceleratedScheduler) or any(scheduler is s for s, _ in again):
            again.append((scheduler, scheduler))
        elif id(inner) in by_optimizer:
            by_optimizer[id(inner)].schedulers.append(scheduler)
        else:
            prepared = precision.prepared_optimizer(inner)
            if dummies.is_dummy_scheduler(scheduler):
                raise ConfigError(
                    f"Pass scheduler {k} (DummyScheduler) to the same prepare() call as its optimizer: DeepSpeed "
                    f"builds the scheduler a DummyScheduler stands for together with the engine"
                    + ("" if prepared is not None else ", and its optimizer is not one this accelerator prepares")
                )
            if prepared is None:
                raise ConfigError(
                    f"Pass scheduler {k} ({type(scheduler).__name__}) to prepare() with its optimizer (or after "
                    f"it): its optimizer is not one this accelerator prepares"
                )
            later.append((scheduler, prepared))
    for pair in pairs:
        dummies.check_schedulers(pair.optimizer, pair.optimizer_index, pair.schedulers)
    return pairs, again, later


def _ordinals(indices: Sequence[int]) -> str:
    words = ("first", "second", "third")
    return " and ".join(words[i] if i < len(words) else f"{i + 1}th" for i in indices)


def prepare_jointly(
    accelerator: Accelerator,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    dataloaders: Sequence[Any],
) -> PreparedObjects | None:
    """``deepspeed.initialize`` for each model of one ``prepare`` call, with its optimizer and schedulers."""
    precision = accelerator.precision
    if not isinstance(precision, ZeroPrecision):
        raise ConfigError("backend 'zero' needs its own precision, but another plugin replaced it (plait_precision)")
    if not models and not optimizers and not schedulers:
        return None
    precision.forget_unprepared(accelerator.prepared)
    pairs, again, later = _pair(precision, accelerator.prepared, models, optimizers, schedulers)
    options: ZeroOptions = accelerator.backend_options.active
    micro = _micro_batch_size(list(dataloaders) + list(accelerator.prepared.dataloaders))
    placed = [pair for pair in pairs if pair.optimizer is None and options.effective_stage != 3]
    built = [pair for pair in pairs if pair not in placed]
    # Every config first (each may refuse), then the engines.
    configs = [_config(accelerator, options, micro, pair) for pair in built]
    results: list[tuple[Any, Any]] = []
    for pair in placed:  # nothing for DeepSpeed to shard: placed by core already, in mixed precision here
        if accelerator.mixed_precision != "no":
            patch_forward(pair.model, precision.wrap_forward)
        results.append((pair.model, pair.model))
    if built:
        deepspeed = import_deepspeed(accelerator.device.type)
        ensure_comm(deepspeed, accelerator.device.type)
        for pair, (config, engine_scheduler) in zip(built, configs):
            results.extend(_build(accelerator, deepspeed, pair, config, engine_scheduler))
    results.extend(again)
    results.extend((s, _scheduler(accelerator, s, optimizer, engine_steps=False)) for s, optimizer in later)
    return PreparedObjects(results)


def _config(accelerator: Accelerator, options: ZeroOptions, micro: int | None, pair: _Pair) -> tuple[dict[str, Any], Any]:
    # The engine steps the first scheduler after each applied step; through core's wrapper it keeps HF Accelerate's
    # rule (once per process unless batches are split), so a schedule runs as long as under ddp. A scheduler that
    # needs a metric (ReduceLROnPlateau) is stepped by the user, as under every other backend.
    # A DummyScheduler's scheduler is built and stepped by the engine (once per applied step, as in HF Accelerate).
    scheduler = pair.schedulers[0] if pair.schedulers else None
    engine_scheduler = None
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    dummy = dummies.is_dummy_scheduler(scheduler)
    if scheduler is not None and accelerator.step_scheduler_with_optimizer and not plateau and not dummy:
        engine_scheduler = AcceleratedScheduler(
            scheduler, [], accelerator.gradient_state, step_with_optimizer=True,
            split_batches=accelerator.split_batches, num_processes=accelerator.num_processes,
        )
    config = build_config(
        options,
        micro_batch_size=micro,
        gradient_accumulation_steps=accelerator.gradient_accumulation_steps,
        world_size=accelerator.num_processes,
        mixed_precision=accelerator.mixed_precision,
        has_optimizer=pair.optimizer is not None and not dummies.is_dummy_optimizer(pair.optimizer),
        has_scheduler=scheduler is not None and not dummy,
        dummies=dummies.auto_values(pair.optimizer, scheduler, accelerator.num_processes, accelerator.split_batches),
    )
    if config["gradient_accumulation_steps"] != accelerator.gradient_accumulation_steps:
        # Only the Accelerator's default of 1 gives way (any other value must match): the JSON's value rules.
        accelerator.gradient_accumulation_steps = int(config["gradient_accumulation_steps"])
    return config, engine_scheduler


def _build(accelerator: Accelerator, deepspeed: Any, pair: _Pair, config: dict[str, Any],
           engine_scheduler: Any) -> list[tuple[Any, Any]]:
    precision: Any = accelerator.precision
    parts: dict[str, Any] = {"optimizer": pair.optimizer, "lr_scheduler": engine_scheduler}
    if dummies.is_dummy_optimizer(pair.optimizer):  # DeepSpeed builds the "optimizer" block's optimizer
        parts = {"model_parameters": dummies.model_parameters(pair.optimizer)}
    first: Any = pair.schedulers[0] if pair.schedulers else None
    if dummies.is_dummy_scheduler(first) and first.lr_scheduler_callable is not None:
        parts["lr_scheduler"] = first.lr_scheduler_callable  # DeepSpeed calls it with its optimizer
    engine, _, _, _ = deepspeed.initialize(model=pair.model, config=config, dist_init_required=False, **parts)
    precision.add(engine, trained=pair.optimizer is not None)
    if accelerator.mixed_precision != "no":
        patch_forward(engine, precision.wrap_forward)
    results: list[tuple[Any, Any]] = [(pair.model, engine)]
    prepared_optimizer = None
    if pair.optimizer is not None:
        prepared_optimizer = ZeroOptimizer(engine, accelerator.gradient_state, precision, config["gradient_clipping"])
        precision.add_optimizer(pair.optimizer, prepared_optimizer)
        results.append((pair.optimizer, prepared_optimizer))
    for i, scheduler in enumerate(pair.schedulers):
        if dummies.is_dummy_scheduler(scheduler):  # the one scheduler of its engine (checked in _pair)
            if engine.lr_scheduler is None:
                raise RuntimeError(f"DeepSpeed built no scheduler for {type(scheduler).__name__}: report this to plait")
            results.append((scheduler, _scheduler(accelerator, engine.lr_scheduler, prepared_optimizer, True)))
            continue
        engine_steps = i == 0 and engine_scheduler is not None
        results.append((scheduler, _scheduler(accelerator, scheduler, prepared_optimizer, engine_steps)))
    return results


def _scheduler(accelerator: Accelerator, scheduler: Any, optimizer: Any, engine_steps: bool) -> AcceleratedScheduler:
    kind = EngineScheduler if engine_steps else AcceleratedScheduler
    return kind(
        scheduler, [optimizer] if optimizer is not None else [], accelerator.gradient_state,
        step_with_optimizer=accelerator.step_scheduler_with_optimizer,
        split_batches=accelerator.split_batches, num_processes=accelerator.num_processes,
    )
