"""``DummyOptim`` and ``DummyScheduler``: HF Accelerate's stand-ins for the optimizer and scheduler that the
DeepSpeed config's ``"optimizer"`` and ``"scheduler"`` blocks describe, which DeepSpeed builds itself.

``DummyOptim(params, lr=..., weight_decay=...)`` hands ``params`` to ``deepspeed.initialize`` as
``model_parameters``; ``DummyScheduler(optimizer, total_num_steps=..., warmup_num_steps=...)`` lets the engine
build the ``"scheduler"`` block's scheduler, or with ``lr_scheduler_callable`` the scheduler that function returns
for DeepSpeed's optimizer. Their values fill the blocks' ``"auto"`` entries as HF Accelerate fills them
(:func:`auto_values`; :mod:`plait_zero.deepspeed_config` writes them). No torch or deepspeed import here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plait.errors import ConfigError
from plait.utils.backend_plugins import DummyOptim, DummyScheduler

__all__ = ["Dummies", "auto_values", "check_blocks", "check_schedulers", "fill_blocks", "is_dummy_optimizer",
           "is_dummy_scheduler", "model_parameters", "parameters"]


@dataclass(frozen=True)
class Dummies:
    """What DeepSpeed builds for one engine from its config, and the ``"auto"`` values the dummies give it."""

    #: A ``DummyOptim``: the engine's optimizer is the ``"optimizer"`` block's.
    optimizer: bool = False
    #: A ``DummyScheduler`` without ``lr_scheduler_callable``: the engine's scheduler is the ``"scheduler"`` block's.
    scheduler: bool = False
    #: A ``DummyScheduler`` with ``lr_scheduler_callable``: the engine's scheduler is what the function returns.
    scheduler_callable: bool = False
    #: Dotted config paths (``"optimizer.params.lr"``) to the values that replace an ``"auto"`` there.
    values: Mapping[str, Any] = field(default_factory=dict)


def is_dummy_optimizer(obj: Any) -> bool:
    return isinstance(obj, DummyOptim)


def is_dummy_scheduler(obj: Any) -> bool:
    return isinstance(obj, DummyScheduler)


def model_parameters(optimizer: DummyOptim) -> list[Any]:
    """The ``DummyOptim``'s parameters or param groups as lists, for ``deepspeed.initialize(model_parameters=...)``.

    They are stored back on the ``DummyOptim`` as lists: a generator such as ``model.parameters()`` can be read
    only once, and pairing reads them before the engine does."""
    groups = [
        {**entry, "params": [entry["params"]] if hasattr(entry["params"], "data_ptr") else list(entry["params"])}
        if isinstance(entry, Mapping) else entry
        for entry in optimizer.params
    ]
    optimizer.params = groups
    return groups


def parameters(optimizer: Any) -> list[Any]:
    """Every parameter an optimizer (a torch optimizer or a ``DummyOptim``) holds."""
    if is_dummy_optimizer(optimizer):
        found: list[Any] = []
        for entry in model_parameters(optimizer):
            found.extend(entry["params"] if isinstance(entry, Mapping) else [entry])
        return found
    return [p for group in optimizer.param_groups for p in group["params"]]


def check_schedulers(optimizer: Any, optimizer_index: int, schedulers: Sequence[Any]) -> None:
    """HF Accelerate's rules for one engine's schedulers: a ``DummyOptim`` takes a ``DummyScheduler`` only, and a
    ``DummyScheduler`` is the engine's one scheduler."""
    dummies = [s for s in schedulers if is_dummy_scheduler(s)]
    if is_dummy_optimizer(optimizer):
        other = next((s for s in schedulers if not is_dummy_scheduler(s)), None)
        if other is not None:
            raise ConfigError(
                f"Pass DummyScheduler(optimizer, total_num_steps=..., warmup_num_steps=...) instead of "
                f"{type(other).__name__} for optimizer {optimizer_index} (a DummyOptim): DeepSpeed builds that "
                f"optimizer from the config's \"optimizer\" block, so only a DummyScheduler (the config's "
                f"\"scheduler\" block, or its lr_scheduler_callable) can schedule it, as in HF Accelerate"
            )
    if dummies and len(schedulers) > 1:
        raise ConfigError(
            f"Pass one scheduler for optimizer {optimizer_index} when one is a DummyScheduler (got "
            f"{', '.join(type(s).__name__ for s in schedulers)}): a DeepSpeed engine runs one scheduler"
        )


def auto_values(optimizer: Any, scheduler: Any, num_processes: int, split_batches: bool) -> Dummies:
    """What the dummies among one engine's ``optimizer`` and first ``scheduler`` ask DeepSpeed to build, and the
    values HF Accelerate fills the blocks' ``"auto"`` entries with.

    ``optimizer.params.lr`` and ``weight_decay`` come from the ``DummyOptim``. The scheduler's
    ``warmup_min_lr`` is 0, ``warmup_max_lr`` the optimizer's learning rate (the ``DummyOptim``'s ``lr``, a torch
    optimizer's ``defaults["lr"]``), ``warmup_num_steps`` the ``DummyScheduler``'s, and ``total_num_steps``
    its ``total_num_steps`` divided by the number of processes (rounded up) unless batches are split: the engine
    steps its scheduler once per optimizer step, where a torch scheduler steps once per process.
    """
    values: dict[str, Any] = {}
    dummy_optimizer = is_dummy_optimizer(optimizer)
    if dummy_optimizer:
        values["optimizer.params.lr"] = optimizer.lr
        values["optimizer.params.weight_decay"] = optimizer.weight_decay
    if not is_dummy_scheduler(scheduler):
        return Dummies(optimizer=dummy_optimizer, values=values)
    if scheduler.lr_scheduler_callable is not None:
        if not callable(scheduler.lr_scheduler_callable):
            raise ConfigError(
                f"Give DummyScheduler(lr_scheduler_callable=...) a function of the optimizer that returns a "
                f"scheduler (lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, ...)): got "
                f"{scheduler.lr_scheduler_callable!r}"
            )
        return Dummies(optimizer=dummy_optimizer, scheduler_callable=True, values=values)
    inner = scheduler.optimizer
    defaults = getattr(inner, "defaults", None)
    max_lr = defaults["lr"] if isinstance(defaults, Mapping) and "lr" in defaults else getattr(inner, "lr", None)
    values["scheduler.params.warmup_min_lr"] = 0
    if max_lr is not None:
        values["scheduler.params.warmup_max_lr"] = max_lr
    values["scheduler.params.warmup_num_steps"] = scheduler.warmup_num_steps
    total = scheduler.total_num_steps
    if total is not None:
        values["scheduler.params.total_num_steps"] = total if split_batches else math.ceil(total / num_processes)
    return Dummies(optimizer=dummy_optimizer, scheduler=True, values=values)


#: What each block is for, in the messages of :func:`check_blocks`.
_EXAMPLES = {
    "optimizer": '{"optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto"}}}',
    "scheduler": '{"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": '
                 '"auto", "warmup_num_steps": "auto", "total_num_steps": "auto"}}}',
}


def check_blocks(config: Mapping[str, Any], source: str, has_optimizer: bool, has_scheduler: bool,
                 dummies: Dummies) -> None:
    """HF Accelerate's rules: a torch optimizer (scheduler) and the config's block of that name exclude each
    other; a ``DummyOptim`` (``DummyScheduler``) needs the block (or, for the scheduler, ``lr_scheduler_callable``)."""
    if has_optimizer and "optimizer" in config:
        raise ConfigError(
            f"Pass DummyOptim(model.parameters(), lr=...) (plait.utils.DummyOptim) instead of the torch optimizer, "
            f"or remove the \"optimizer\" block from {source}: {source} has an \"optimizer\" block, which DeepSpeed "
            f"builds, and prepare() was given a torch optimizer too (a DeepSpeed engine has one optimizer)"
        )
    if dummies.optimizer and "optimizer" not in config:
        raise ConfigError(
            f"Add an \"optimizer\" block to {source}, such as {_EXAMPLES['optimizer']}, or pass a torch optimizer "
            f"instead of DummyOptim: a DummyOptim stands for the optimizer DeepSpeed builds from that block, and "
            f"{source} has none"
        )
    if has_scheduler and "scheduler" in config:
        raise ConfigError(
            f"Pass DummyScheduler(optimizer, total_num_steps=..., warmup_num_steps=...) instead of the torch "
            f"scheduler, or remove the \"scheduler\" block from {source}: {source} has a \"scheduler\" block, which "
            f"DeepSpeed builds, and prepare() was given a learning-rate scheduler too"
        )
    if dummies.scheduler and "scheduler" not in config:
        raise ConfigError(
            f"Add a \"scheduler\" block to {source}, such as {_EXAMPLES['scheduler']}, or give DummyScheduler an "
            f"lr_scheduler_callable (a function of the optimizer that returns a scheduler), or pass a torch "
            f"scheduler: a DummyScheduler stands for the scheduler DeepSpeed builds from that block, and {source} "
            f"has none"
        )
    if dummies.scheduler_callable and "scheduler" in config:
        raise ConfigError(
            f"Remove lr_scheduler_callable from DummyScheduler, or the \"scheduler\" block from {source}: DeepSpeed "
            f"would build the callable's scheduler and ignore the block"
        )


def fill_blocks(config: dict[str, Any], source: str, dummies: Dummies) -> None:
    """Replace each ``"auto"`` among ``dummies.values``'s paths with its value (an explicit value stands, as in
    HF Accelerate)."""
    values = dict(dummies.values)
    lr, max_lr = values.get("optimizer.params.lr"), values.get("scheduler.params.warmup_max_lr")
    theirs_lr = _node(config, "optimizer.params.lr")
    if (dummies.optimizer and _node(config, "scheduler.params.warmup_max_lr") == "auto" and theirs_lr not in
            (None, "auto") and theirs_lr != max_lr):
        raise ConfigError(
            f"Give DummyOptim the optimizer's learning rate (DummyOptim(params, lr={theirs_lr!r})) or set "
            f"scheduler.params.warmup_max_lr in {source}: its \"auto\" is DummyOptim's lr ({lr!r}), as in HF "
            f"Accelerate, but optimizer.params.lr is {theirs_lr!r}"
        )
    for path, value in values.items():
        *parents, key = path.split(".")
        block: Any = config
        for name in parents:
            block = block.get(name) if isinstance(block, dict) else None
        if not isinstance(block, dict) or block.get(key) != "auto":
            continue
        if key == "warmup_num_steps" and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(
                f"Give DummyScheduler(optimizer, warmup_num_steps=...) a positive number of warmup steps, or set "
                f"scheduler.params.warmup_num_steps in {source}: DeepSpeed's warmup schedulers refuse "
                f"warmup_num_steps={value!r}"
            )
        block[key] = value


def _node(config: Mapping[str, Any], path: str) -> Any:
    value: Any = config
    for name in path.split("."):
        value = value.get(name) if isinstance(value, Mapping) else None
    return value
