"""Worker functions for ``test_dummy_optim.py``: HF Accelerate's ``DummyOptim``/``DummyScheduler`` under ``zero``.

Run on 2 real processes over gloo (CPU) by ``plait.testing.run_processes``, in one
launch. The same model and data train with the DeepSpeed config's own AdamW and
WarmupDecayLR (DummyOptim, DummyScheduler, ``"auto"`` values) and with a torch AdamW
of the same hyperparameters whose LambdaLR follows DeepSpeed's schedule, at stages 2
and 3 (with param groups: no weight decay for biases); the torch run is the oracle. The config's ``"torch_adam": true`` makes
DeepSpeed build torch's AdamW: its FusedAdam would first compile a C++ op for
minutes on CPU.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from plait.testing import error_of

STEPS = 10
BATCH = 4
LR = 0.05
BETAS = (0.9, 0.99)
EPS = 1e-7
WEIGHT_DECAY = 0.01
WARMUP = 3
#: What the loop is told (HF Accelerate's examples count the unsharded loader's steps): halved for 2 processes.
TOTAL = 2 * STEPS


def ds_config(stage: int, scheduler: bool = True) -> dict[str, Any]:
    """A DeepSpeed config in HF Accelerate's style: AdamW and WarmupDecayLR blocks with ``"auto"`` values."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "zero_optimization": {"stage": stage},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "weight_decay": "auto", "betas": list(BETAS),
                                                  "eps": EPS, "torch_adam": True}},
    }
    if scheduler:
        config["scheduler"] = {"type": "WarmupDecayLR", "params": {
            "warmup_min_lr": "auto", "warmup_max_lr": "auto", "warmup_num_steps": "auto", "total_num_steps": "auto"}}
    return config


def deepspeed_gamma(i: int, warmup: int, total: int) -> float:
    """DeepSpeed's WarmupDecayLR factor after ``i + 1`` scheduler steps (log warmup, then linear decay)."""
    warmup = max(2, warmup)
    if i < warmup:
        return math.log(i + 1) / math.log(warmup)
    return max(0.0, (total - i) / max(1.0, total - warmup))


def make_model() -> nn.Module:
    torch.manual_seed(0)  # uneven sizes: ZeRO's flat partitions split tensors between the processes
    return nn.Sequential(nn.Linear(6, 13), nn.Tanh(), nn.Linear(13, 7), nn.Tanh(), nn.Linear(7, 1))


def groups(model: nn.Module) -> list[dict[str, Any]]:
    """HF Accelerate's examples' param groups: no weight decay for biases (generators, read once)."""
    return [{"params": (p for n, p in model.named_parameters() if not n.endswith("bias"))},
            {"params": (p for n, p in model.named_parameters() if n.endswith("bias")), "weight_decay": 0.0}]


def loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(STEPS * BATCH * 2, 6, generator=g)
    y = torch.sin(x @ torch.linspace(-1.0, 1.0, 6)[:, None])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH)


def _loop(accelerator: Any, model: Any, optimizer: Any, data: Any, scheduler: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"last_lr": [], "group_lr": [], "skipped": []}
    for x, y in data:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        out["last_lr"].append(float(scheduler.get_last_lr()[0]))
        out["group_lr"].append(float(optimizer.param_groups[0]["lr"]))
        out["skipped"].append(optimizer.step_was_skipped)
    out["params"] = {k: v.detach().cpu().clone() for k, v in accelerator.get_state_dict(model).items()}
    return out


def dummy_run(stage: int, grouped: bool = False) -> dict[str, Any]:
    """DeepSpeed's own AdamW and WarmupDecayLR, from a DeepSpeedPlugin's config, through DummyOptim/DummyScheduler."""
    from plait import Accelerator
    from plait.utils import DeepSpeedPlugin, DummyOptim, DummyScheduler

    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config(stage)))
    model = make_model()
    optimizer = DummyOptim(groups(model) if grouped else model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = DummyScheduler(optimizer, total_num_steps=TOTAL, warmup_num_steps=WARMUP)
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer, loader(), scheduler)
    first_lr = float(scheduler.get_last_lr()[0])
    out = _loop(accelerator, model, optimizer, data, scheduler)
    out.update(
        first_lr=first_lr, stage=model.zero_optimization_stage(),
        types=[type(optimizer).__name__, type(scheduler).__name__, type(model.basic_optimizer).__name__,
               type(model.lr_scheduler).__name__],
        optimizer_params=dict(model.optimizer_params()), scheduler_params=dict(model.scheduler_params()),
    )
    accelerator.free_memory()
    return out


def torch_run(stage: int, grouped: bool = False) -> dict[str, Any]:
    """The oracle: a torch AdamW with the same hyperparameters, its LambdaLR following DeepSpeed's schedule
    (the engine's first step runs at warmup_min_lr = 0, step k at the factor after k - 1 scheduler steps)."""
    from plait import Accelerator

    accelerator = Accelerator(backend="zero", backend_options={"stage": stage}, step_scheduler_with_optimizer=False)
    model = make_model()
    optimizer = torch.optim.AdamW(groups(model) if grouped else model.parameters(), lr=LR, betas=BETAS, eps=EPS,
                                  weight_decay=WEIGHT_DECAY)
    total = math.ceil(TOTAL / 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: 0.0 if k == 0 else deepspeed_gamma(k - 1, WARMUP, total))
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer, loader(), scheduler)
    out = _loop(accelerator, model, optimizer, data, scheduler)
    accelerator.free_memory()
    return out


def callable_run() -> dict[str, Any]:
    """DummyScheduler(lr_scheduler_callable=...): DeepSpeed calls it with its optimizer and steps the scheduler it
    returns once per optimizer step; a DummyScheduler prepared after its optimizer is refused."""
    from plait import Accelerator
    from plait.utils import DeepSpeedPlugin, DummyOptim, DummyScheduler

    accelerator = Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config(2, scheduler=False)))
    model = make_model()
    seen: list[str] = []

    def make_scheduler(optimizer: Any) -> Any:
        seen.append(type(optimizer).__name__)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 0.5 ** k)

    dummy = DummyOptim(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    model, optimizer, data, scheduler = accelerator.prepare(
        model, dummy, loader(), DummyScheduler(dummy, lr_scheduler_callable=make_scheduler))
    out = _loop(accelerator, model, optimizer, data, scheduler)
    out.update(seen=seen, types=[type(scheduler).__name__, type(scheduler.scheduler).__name__])
    out["late"] = error_of(lambda: accelerator.prepare(DummyScheduler(dummy, total_num_steps=4, warmup_num_steps=2)))
    accelerator.free_memory()
    return out


def plugins_run() -> dict[str, Any]:
    """HF Accelerate's deepspeed_plugins: the student's engine under its stage-2 plugin, then the teacher's,
    after accelerator.state.select_deepspeed_plugin("teacher"), under its stage-3 JSON."""
    from plait import Accelerator
    from plait.utils import DeepSpeedPlugin, get_active_deepspeed_plugin

    plugins = {"student": DeepSpeedPlugin(zero_stage=2),
               "teacher": DeepSpeedPlugin(zero_stage=3, hf_ds_config={"zero_optimization": {"stage": 3},
                                                                      "train_micro_batch_size_per_gpu": "auto"})}
    accelerator = Accelerator(deepspeed_plugins=plugins)
    student = make_model()
    torch.manual_seed(5)
    teacher = nn.Sequential(nn.Linear(6, 9), nn.Tanh(), nn.Linear(9, 1)).requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=LR)
    student, optimizer, data = accelerator.prepare(student, optimizer, loader())
    out: dict[str, Any] = {"active_first": get_active_deepspeed_plugin(accelerator.state) is plugins["student"]}
    accelerator.state.select_deepspeed_plugin("teacher")
    out["active_then"] = get_active_deepspeed_plugin(accelerator.state) is plugins["teacher"]
    out["selected"] = accelerator.backend_options.selected
    teacher = accelerator.prepare(teacher)
    out["stages"] = (student.zero_optimization_stage(), teacher.zero_optimization_stage())
    out["teacher_partitioned"] = all(hasattr(p, "ds_tensor") for p in teacher.module.parameters())
    x, y = next(iter(data))
    with torch.no_grad():
        target = teacher(x)
    accelerator.backward(nn.functional.mse_loss(student(x), y) + nn.functional.mse_loss(student(x), target))
    optimizer.step()
    out["trained"] = True
    accelerator.free_memory()
    return out


def dummy_worker() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for stage in (2, 3):  # stage 3 with param groups
        out[f"dummy{stage}"] = dummy_run(stage, grouped=stage == 3)
        out[f"torch{stage}"] = torch_run(stage, grouped=stage == 3)
    out["callable"] = callable_run()
    out["plugins"] = plugins_run()
    return out
