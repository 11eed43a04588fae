"""HF Accelerate's ``DummyOptim``/``DummyScheduler`` and ``deepspeed_plugins`` under ``zero``.

One launch of 2 processes (gloo, CPU) for the runs that build engines
(:mod:`dummy_workers`): DeepSpeed's own AdamW and WarmupDecayLR, built from the
config's blocks with their ``"auto"`` values filled from the dummies, train exactly
as a torch AdamW of the same hyperparameters whose schedule is DeepSpeed's formula.
The refusals (raised before DeepSpeed is imported), the ``"auto"`` values and the
mapping of ``deepspeed_plugins`` onto the zero options are checked in this process.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import dummy_workers as W
from zero_helpers import clean_environment, max_diff  # noqa: F401

from plait.errors import ConfigError
from plait.testing import run_processes
from plait.utils import DeepSpeedPlugin, DummyOptim, DummyScheduler
from plait_zero.deepspeed_config import build_config
from plait_zero.dummies import auto_values, parameters
from plait_zero.options import ZeroOptions

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    return run_processes(W.dummy_worker, 2)


def expected_lrs(total: int) -> list[float]:
    """The learning rate after each optimizer step: WarmupDecayLR's formula, written out (log warmup over
    WARMUP steps from 0 to LR, then linear decay to 0 at ``total``)."""
    out = []
    for i in range(W.STEPS):
        factor = math.log(i + 1) / math.log(W.WARMUP) if i < W.WARMUP else (total - i) / (total - W.WARMUP)
        out.append(W.LR * factor)
    return out


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeeds_own_adamw_and_schedule_train_like_torch_adamw(runs: list[dict[str, Any]], stage: int) -> None:
    """Stage 3 with param groups (generators inside dicts, as HF Accelerate's examples build them)."""
    rank0, rank1 = runs
    dummy, oracle = rank0[f"dummy{stage}"], rank0[f"torch{stage}"]
    assert dummy["stage"] == stage
    assert dummy["types"] == ["ZeroOptimizer", "EngineScheduler", "AdamW", "WarmupDecayLR"]
    # The blocks' "auto" values, filled as HF Accelerate fills them (total_num_steps per process: 20 / 2).
    assert dummy["optimizer_params"] == {"lr": W.LR, "weight_decay": W.WEIGHT_DECAY, "betas": list(W.BETAS),
                                         "eps": W.EPS, "torch_adam": True}
    assert dummy["scheduler_params"] == {"warmup_min_lr": 0, "warmup_max_lr": W.LR, "warmup_num_steps": W.WARMUP,
                                         "total_num_steps": W.STEPS}
    # The engine stepped its scheduler once per optimizer step, along the formula; get_last_lr() reads it.
    assert dummy["first_lr"] == 0.0
    assert dummy["last_lr"] == pytest.approx(expected_lrs(W.STEPS), rel=1e-12, abs=1e-15)
    assert dummy["group_lr"] == dummy["last_lr"] and not any(dummy["skipped"])
    assert oracle["last_lr"] == pytest.approx(dummy["last_lr"], rel=1e-12, abs=1e-15)
    # The same weights as torch's AdamW, on both processes; the oracle can fail: training moved them.
    assert max_diff(dummy["params"], oracle["params"]) < TOLERANCE
    assert max_diff(dummy["params"], rank1[f"dummy{stage}"]["params"]) == 0.0
    initial = W.make_model().state_dict()
    assert max_diff(dummy["params"], initial) > 1e-2


def test_lr_scheduler_callable_gets_deepspeeds_optimizer_and_steps_once_per_step(runs: list[dict[str, Any]]) -> None:
    run = runs[0]["callable"]
    assert run["seen"] == ["AdamW"] and run["types"] == ["EngineScheduler", "LambdaLR"]
    assert run["last_lr"] == pytest.approx([W.LR * 0.5 ** (k + 1) for k in range(W.STEPS)], rel=1e-12)
    assert run["late"].startswith(
        "ConfigError: Pass scheduler 0 (DummyScheduler) to the same prepare() call as its optimizer")


def test_deepspeed_plugins_build_each_engine_from_the_selected_plugin(runs: list[dict[str, Any]]) -> None:
    run = runs[0]["plugins"]
    assert run["active_first"] and run["active_then"] and run["selected"] == "teacher"
    assert run["stages"] == (2, 3) and run["teacher_partitioned"] and run["trained"]


# --------------------------------------------------------------------------- in this process, without DeepSpeed
class _CustomScheduler(torch.optim.lr_scheduler.LRScheduler):
    def __init__(self, optimizer: Any) -> None:  # a scheduler class that only keeps its optimizer
        self.optimizer = optimizer


def _refusal(case: str) -> str:
    from plait import Accelerator

    with_blocks = W.ds_config(2)
    optimizer_only = W.ds_config(2, scheduler=False)
    neither = {k: v for k, v in optimizer_only.items() if k != "optimizer"}
    model = nn.Linear(3, 1)
    dummy = DummyOptim(model.parameters(), lr=0.1)
    torch_optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    config, objects = {
        "dummy_without_block": (neither, [dummy]),
        "torch_with_block": (optimizer_only, [torch_optimizer]),
        "dummy_scheduler_without_block": (optimizer_only, [dummy, DummyScheduler(dummy, total_num_steps=4)]),
        "torch_scheduler_with_block": (
            {**neither, "scheduler": with_blocks["scheduler"]},
            [torch_optimizer, torch.optim.lr_scheduler.StepLR(torch_optimizer, 1)]),
        "callable_with_block": (with_blocks, [dummy, DummyScheduler(dummy, lr_scheduler_callable=lambda o: None)]),
        "torch_scheduler_of_dummy": (optimizer_only, [dummy, _CustomScheduler(dummy)]),
        "two_schedulers": (with_blocks, [dummy, DummyScheduler(dummy, total_num_steps=4, warmup_num_steps=2),
                                         DummyScheduler(dummy, total_num_steps=4, warmup_num_steps=2)]),
        "no_warmup": (with_blocks, [dummy, DummyScheduler(dummy, total_num_steps=4)]),
        "max_lr_unlike_lr": (
            {**with_blocks, "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}},
            [dummy, DummyScheduler(dummy, total_num_steps=4, warmup_num_steps=2)]),
        "auto_left": ({**neither, "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto"}}}, [dummy]),
    }[case]
    accelerator = Accelerator(backend="zero", backend_options={"config_file": config})
    with pytest.raises(ConfigError) as info:
        accelerator.prepare(model, *objects)
    return str(info.value)


@pytest.mark.parametrize("case,start", [
    ("dummy_without_block", 'Add an "optimizer" block to the DeepSpeed config dict (config_file), such as'),
    ("torch_with_block", "Pass DummyOptim(model.parameters(), lr=...) (plait.utils.DummyOptim) instead of the torch "
                         'optimizer, or remove the "optimizer" block'),
    ("dummy_scheduler_without_block", 'Add a "scheduler" block to the DeepSpeed config dict (config_file), such as'),
    ("torch_scheduler_with_block", "Pass DummyScheduler(optimizer, total_num_steps=..., warmup_num_steps=...) "
                                   'instead of the torch scheduler, or remove the "scheduler" block'),
    ("callable_with_block", 'Remove lr_scheduler_callable from DummyScheduler, or the "scheduler" block'),
    ("torch_scheduler_of_dummy", "Pass DummyScheduler(optimizer, total_num_steps=..., warmup_num_steps=...) "
                                 "instead of _CustomScheduler for optimizer 0 (a DummyOptim)"),
    ("two_schedulers", "Pass one scheduler for optimizer 0 when one is a DummyScheduler"),
    ("no_warmup", "Give DummyScheduler(optimizer, warmup_num_steps=...) a positive number of warmup steps"),
    ("max_lr_unlike_lr", "Give DummyOptim the optimizer's learning rate (DummyOptim(params, lr=0.003))"),
    ("auto_left", "Give numbers at optimizer.params.betas in the DeepSpeed config dict (config_file)"),
])
def test_what_cannot_be_built_is_refused_with_the_fix_first(case: str, start: str) -> None:
    assert _refusal(case).startswith(start)


def test_auto_values_follow_hf_accelerate() -> None:
    facts = {"micro_batch_size": 4, "gradient_accumulation_steps": 1, "mixed_precision": "no",
             "has_optimizer": False, "has_scheduler": False}
    model = nn.Linear(3, 1)
    dummy = DummyOptim(model.parameters(), lr=0.1, weight_decay=0.02)
    scheduler = DummyScheduler(dummy, total_num_steps=9, warmup_num_steps=2)
    config = W.ds_config(2)
    config["optimizer"]["params"]["weight_decay"] = 0.5  # a value given in the JSON stands, as in HF Accelerate
    options = ZeroOptions(config_file=config)
    built = build_config(options, world_size=4, dummies=auto_values(dummy, scheduler, 4, False), **facts)
    assert (built["optimizer"]["params"]["lr"], built["optimizer"]["params"]["weight_decay"]) == (0.1, 0.5)
    assert built["scheduler"]["params"] == {"warmup_min_lr": 0, "warmup_max_lr": 0.1, "warmup_num_steps": 2,
                                            "total_num_steps": 3}  # ceil(9 / 4) steps per process
    split = build_config(options, world_size=4, dummies=auto_values(dummy, scheduler, 4, True), **facts)
    assert split["scheduler"]["params"]["total_num_steps"] == 9  # split batches: the steps are the loader's
    # A torch optimizer with the config's scheduler: warmup_max_lr is its lr.
    torch_optimizer = torch.optim.SGD(model.parameters(), lr=0.7)
    only_scheduler = ZeroOptions(config_file={k: v for k, v in config.items() if k != "optimizer"})
    built = build_config(only_scheduler, world_size=1, **{**facts, "has_optimizer": True},
                         dummies=auto_values(torch_optimizer, DummyScheduler(torch_optimizer, 5, 1), 1, False))
    assert built["scheduler"]["params"]["warmup_max_lr"] == 0.7 and "optimizer" not in built
    # model.parameters() is a generator: read once, kept, so that pairing and the engine see the same parameters.
    assert [id(p) for p in parameters(dummy)] == [id(p) for p in parameters(dummy)] == [id(p) for p in model.parameters()]


def test_deepspeed_plugins_are_the_zero_options_named_configs() -> None:
    from plait import Accelerator
    from plait.utils import get_active_deepspeed_plugin

    teacher_json = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                    "train_micro_batch_size_per_gpu": "auto"}
    plugins = {"student": DeepSpeedPlugin(zero_stage=2), "teacher": DeepSpeedPlugin(zero_stage=3, hf_ds_config=teacher_json)}
    accelerator = Accelerator(deepspeed_plugins=plugins)
    options = accelerator.backend_options
    assert accelerator.backend == "zero" and isinstance(options, ZeroOptions)
    assert options.plugin_names == ("student", "teacher") and options.selected == "student"
    assert options.active.effective_stage == 2 and options.active.user_config == {}
    assert get_active_deepspeed_plugin(accelerator.state) is plugins["student"]

    accelerator.state.select_deepspeed_plugin("teacher")
    assert options.selected == "teacher" and options.active.user_config == teacher_json
    assert get_active_deepspeed_plugin(accelerator.state) is plugins["teacher"] is accelerator.deepspeed_plugin
    # The next prepare builds its engines from the teacher's config.
    built = build_config(options.active, micro_batch_size=4, gradient_accumulation_steps=1, world_size=1,
                         mixed_precision="no", has_optimizer=False, has_scheduler=False)
    assert built["zero_optimization"] == {"stage": 3, "stage3_param_persistence_threshold": 0}
    assert built["train_micro_batch_size_per_gpu"] == 4
    accelerator.state.select_deepspeed_plugin("student")
    assert options.active.effective_stage == 2 and not plugins["teacher"].selected
    with pytest.raises(ValueError, match=r"select_deepspeed_plugin\('techer'\): no such DeepSpeedPlugin"):
        accelerator.state.select_deepspeed_plugin("techer")
