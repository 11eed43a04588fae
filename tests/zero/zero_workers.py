"""Worker functions for the zero tests, run on real processes by ``plait.testing.run_processes``.

Kept in a plain module (not a test file): each worker re-imports its function from
this file. Each launch batches many runs (every DeepSpeed engine costs about a
second, every launch several); workers return plain data (numbers, strings, CPU
tensors) that the tests compare.

The same training loop (HF Accelerate's: ``accumulate``, ``backward``,
``optimizer.step``, ``scheduler.step``, ``zero_grad``) runs under ``ddp`` and
under ``zero`` at each stage; ddp is the oracle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plait.testing import error_of

STEPS = 20
BATCH = 4
LR = 0.05


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.sin(x @ torch.linspace(-1.0, 1.0, 6)[:, None]) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def make_model() -> nn.Module:
    # Uneven parameter sizes, so that ZeRO's flat partitions split tensors between the two processes.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 13), nn.Tanh(), nn.Linear(13, 7), nn.Tanh(), nn.Linear(7, 1))


def params(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().float() for k, v in state.items()}


def loader(micro_steps: int, shuffle: bool = False, batch: int = BATCH) -> torch.utils.data.DataLoader:
    x, y = make_data(micro_steps * BATCH * 2)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=shuffle)


def train(backend: str, accumulation: int = 1, options: dict[str, Any] | None = None, clip: float | None = None,
          steps: int = STEPS, batch: int = BATCH, mixed_precision: str | None = None) -> dict[str, Any]:
    """``steps`` optimizer steps (``steps * accumulation`` micro-steps) of AdamW with a decaying learning rate."""
    from plait import Accelerator

    accelerator = Accelerator(backend=backend, gradient_accumulation_steps=accumulation, backend_options=options,
                              mixed_precision=mixed_precision)
    if options and options.get("zero3_init"):
        with accelerator.init_module():  # the backend-neutral way: no import of plait_zero
            model = make_model()
        out_numel = sum(int(p.ds_tensor.numel()) for p in model.parameters())  # partitioned as soon as built
    else:
        model = make_model()
        out_numel = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.8)
    data = loader(steps * accumulation, batch=batch)
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer, data, scheduler)
    out: dict[str, Any] = {"norms": [], "sync": [], "engine_steps": [], "lr": [], "built_numel": out_numel}
    for x, y in data:
        with accelerator.accumulate(model):
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            if clip is not None and accelerator.sync_gradients:
                out["norms"].append(float(accelerator.clip_grad_norm_(model.parameters(), clip)))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        out["sync"].append(accelerator.sync_gradients)
        if backend == "zero":
            out["engine_steps"].append(int(model.global_steps))
        out["lr"].append(optimizer.param_groups[0]["lr"])
    state = accelerator.get_state_dict(model)
    out["dtype"] = str(next(iter(state.values())).dtype)
    out["params"] = params(state)
    out["type"] = type(model).__name__
    if backend == "zero":
        out["clipping"] = float(model.gradient_clipping())
    accelerator.free_memory()
    return out


# --------------------------------------------------------------------------- test_zero.py
def parity_worker(tmp: str) -> dict[str, Any]:
    """ddp and zero stages 1-3: plain, with accumulation, with clipping (option and clip_grad_norm_)."""
    import safetensors.torch

    from plait import Accelerator

    out: dict[str, Any] = {}
    # First, before any engine exists in this process: zero.Init must find the process group itself.
    out["zero3/init"] = train("zero", options={"stage": 3, "zero3_init": True})
    out["ddp/plain"] = train("ddp")
    out["ddp/accum"] = train("ddp", accumulation=2)
    out["ddp/clip"] = train("ddp", clip=0.3)
    for stage in (1, 2, 3):
        options = {"stage": stage}
        out[f"zero{stage}/plain"] = train("zero", options=options)
        out[f"zero{stage}/accum"] = train("zero", accumulation=2, options=options)
        out[f"zero{stage}/clip"] = train("zero", options=options, clip=0.3)
        out[f"zero{stage}/clip-option"] = train("zero", options={**options, "gradient_clipping": 0.3})
    out["zero2/clip-at-1"] = train("zero", options={"stage": 2, "gradient_clipping": 1.0})
    out["ddp/bf16"] = train("ddp", mixed_precision="bf16")
    for stage in (2, 3):
        out[f"zero{stage}/bf16"] = train("zero", options={"stage": stage}, mixed_precision="bf16")

    # Exports: unwrap_model, get_state_dict and save_model give the user's module and full weights.
    accelerator = Accelerator(backend="zero", backend_options={"stage": 3})
    original = make_model()
    optimizer = torch.optim.SGD(original.parameters(), lr=LR)
    model, optimizer = accelerator.prepare(original, optimizer)
    out["unwrap_is_original"] = accelerator.unwrap_model(model) is original
    out["distributed_type"] = str(accelerator.distributed_type)
    out["local_numel"] = sum(int(p.ds_tensor.numel()) for p in original.parameters())
    out["full_numel"] = sum(int(p.ds_numel) for p in original.parameters())
    state = accelerator.get_state_dict(model)
    out["state_keys"] = sorted(state)
    out["state_shapes"] = {k: tuple(v.shape) for k, v in state.items()}
    export = Path(tmp) / "export"
    accelerator.save_model(model, export)
    if accelerator.is_main_process:
        out["export_files"] = sorted(p.name for p in export.iterdir())
        out["export"] = safetensors.torch.load_file(str(export / "model.safetensors"))
    out["initial"] = params(make_model().state_dict())
    out["clip_value_error"] = error_of(lambda: accelerator.clip_grad_value_(model.parameters(), 1.0))
    out["prepare_model_error"] = error_of(lambda: accelerator.prepare_model(make_model()))
    accelerator.free_memory()

    # A DeepSpeed JSON contradicting the Accelerator is refused at prepare, before any engine is built.
    config_file = Path(tmp) / f"ds_{os.environ['RANK']}.json"
    config_file.write_text('{"gradient_accumulation_steps": 4, "train_micro_batch_size_per_gpu": "auto"}')
    accelerator = Accelerator(backend="zero", gradient_accumulation_steps=2, backend_options={"config_file": str(config_file)})
    model = make_model()
    out["json_conflict_error"] = error_of(
        lambda: accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR), loader(4))
    )
    # ...and "auto" values are filled: batch size from the dataloader, accumulation from the Accelerator.
    config_file.write_text('{"gradient_accumulation_steps": "auto", "train_micro_batch_size_per_gpu": "auto", '
                           '"train_batch_size": "auto", "zero_optimization": {"stage": 1, "reduce_bucket_size": "auto"}}')
    accelerator = Accelerator(backend="zero", gradient_accumulation_steps=2, backend_options={"config_file": str(config_file)})
    model = make_model()
    model, _, _ = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR), loader(4))
    out["auto_filled"] = {
        "micro": model.train_micro_batch_size_per_gpu(), "gas": model.gradient_accumulation_steps(),
        "train_batch_size": model.train_batch_size(), "stage": int(model.zero_optimization_stage()),
        "clipping": model.gradient_clipping(),
    }
    accelerator.free_memory()
    # With the Accelerator's default accumulation (1), the JSON's value is adopted by the Accelerator.
    config_file.write_text('{"gradient_accumulation_steps": 3}')
    accelerator = Accelerator(backend="zero", backend_options={"config_file": str(config_file)})
    model = make_model()
    model, _, _ = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR), loader(4))
    out["adopted_accumulation"] = (accelerator.gradient_accumulation_steps, model.gradient_accumulation_steps())
    accelerator.end_training()
    return out


def single_worker() -> dict[str, Any]:
    """One process (no launcher group: DeepSpeed gets a group of one), batch 8, stages 1 and 3."""
    import torch.distributed as dist

    from plait import Accelerator

    out = {f"zero{stage}": train("zero", options={"stage": stage}, batch=2 * BATCH) for stage in (1, 3)}
    accelerator = Accelerator(backend="zero")
    out["num_processes"] = accelerator.num_processes
    out["group_before_end"] = dist.is_initialized()
    accelerator.end_training()
    out["group_after_end"] = dist.is_initialized()
    return out


# --------------------------------------------------------------------------- test_resume.py
EPOCHS = 2
N_RESUME = 40  # batch 4 on 2 processes: 5 batches per process per epoch


def _resumable_run(mode: str, checkpoint: str, options: dict[str, Any], accum: int, save_at: int) -> dict[str, Any]:
    """HF Accelerate's resume protocol: shuffled loader, dropout, AdamW with a scheduler, different seeds per process.

    ``full``: train every epoch. ``interrupt``: save_state after global micro-step ``save_at`` and stop.
    ``resume``: load_state, skip_first_batches for the interrupted epoch, plain iteration afterwards.
    """
    from plait import Accelerator, set_seed

    set_seed(42, device_specific=True)
    accelerator = Accelerator(backend=options.pop("backend", "zero"), gradient_accumulation_steps=accum,
                              backend_options=options or None)
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.8)
    x, y = make_data(N_RESUME, seed=3)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True)
    model, optimizer, data, scheduler = accelerator.prepare(model, optimizer, data, scheduler)
    out: dict[str, Any] = {"batches_per_epoch": len(data)}
    starting_epoch, resume_step, global_step = 0, None, 0
    if mode == "resume":
        accelerator.load_state(checkpoint)
        global_step = save_at
        starting_epoch, resume_step = divmod(global_step, len(data))
    seen: list[list[float]] = []
    for epoch in range(starting_epoch, EPOCHS):
        model.train()
        active = accelerator.skip_first_batches(data, resume_step) if epoch == starting_epoch and resume_step else data
        for xb, yb in active:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            global_step += 1
            seen.append(yb[:, 0].tolist())
            if mode == "interrupt" and global_step == save_at:
                out["saved"] = accelerator.save_state(checkpoint)
                out["seen"] = seen
                out["params_at_save"] = params(accelerator.get_state_dict(model))
                accelerator.free_memory()
                return out
    out["params"] = params(accelerator.get_state_dict(model))
    out["seen"] = seen
    out["global_step"] = global_step
    out["lr"] = scheduler.get_last_lr()
    accelerator.free_memory()
    return out


def resume_first_launch(root: str, configs: list[tuple[str, dict[str, Any], int, int]]) -> dict[str, Any]:
    """For each (name, options, accum, save_at): the uninterrupted run, then the interrupted one (saves, stops)."""
    from plait import Accelerator

    out: dict[str, Any] = {}
    for name, options, accum, save_at in configs:
        out[f"{name}/full"] = _resumable_run("full", "", dict(options), accum, save_at)
        out[f"{name}/interrupt"] = _resumable_run("interrupt", str(Path(root) / name), dict(options), accum, save_at)
    # save_state between two micro-steps of accumulation is refused (DeepSpeed does not save accumulated gradients).
    accelerator = Accelerator(backend="zero", gradient_accumulation_steps=2)
    model = make_model()
    model, optimizer, data = accelerator.prepare(model, torch.optim.SGD(model.parameters(), lr=LR), loader(4))
    for xb, yb in data:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.mse_loss(model(xb), yb))
            optimizer.step()
        break
    out["mid_accumulation_error"] = error_of(lambda: accelerator.save_state(str(Path(root) / "mid")))
    out["mid_accumulation_leftovers"] = sorted(p.name for p in Path(root).iterdir() if "mid" in p.name)
    accelerator.end_training()
    return out


def resume_second_launch(root: str, configs: list[tuple[str, dict[str, Any], int, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {"torch_loads": []}
    original_load = torch.load

    def recording_load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if str(f).startswith(root):
            out["torch_loads"].append((str(f), kwargs.get("weights_only") is not False))
        return original_load(f, *args, **kwargs)

    torch.load = recording_load  # type: ignore[assignment]
    for name, options, accum, save_at in configs:
        if options.get("backend") != "ddp":
            out[name] = _resumable_run("resume", str(Path(root) / name), dict(options), accum, save_at)
    # A stage-2 checkpoint loaded under stage 3, and a ddp checkpoint under zero: refused, each named.
    out["stage_error"] = error_of(lambda: _resumable_run("resume", str(Path(root) / "stage2"), {"stage": 3}, 1, 5))
    out["ddp_error"] = error_of(lambda: _resumable_run("resume", str(Path(root) / "ddp"), {"stage": 2}, 1, 5))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return out


def resume_one_process(root: str) -> dict[str, Any]:
    """A checkpoint of 2 processes loaded by 1: refused, naming both counts."""
    return {"processes_error": error_of(lambda: _resumable_run("resume", str(Path(root) / "stage2"), {"stage": 2}, 1, 5))}
