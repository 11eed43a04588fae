"""Worker functions for the ddp tests, run on real processes by ``plait.testing.run_processes``.

Kept in a plain module (not a test file): each worker re-imports its function from
this file. Every worker batches several checks into one launch and returns plain
data (numbers, lists, dicts, CPU tensors) that the test process compares against
oracles it computes itself with plain torch.

The helpers at the top (data, models, the plain-torch reference) are shared by the
workers and the tests, so both sides build exactly the same problem.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plait.testing import error_of

# --------------------------------------------------------------------------- #
# the training problem, shared by workers and tests
# --------------------------------------------------------------------------- #

N_SAMPLES = 96
LR = 0.1


def make_data(n: int = N_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.5], [-2.0], [0.5], [3.0]])
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


class Branchy(nn.Module):
    """A model with a branch that forward never uses (DDP's find_unused_parameters case)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.unused = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def reference_sgd(model: nn.Module, batch_size: int, epochs: int = 2, lr: float = LR) -> dict[str, torch.Tensor]:
    """One process, plain torch: SGD on the unshuffled data in batches of ``batch_size``."""
    x, y = make_data()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for i in range(0, len(x), batch_size):
            loss = nn.functional.mse_loss(model(x[i : i + batch_size]), y[i : i + batch_size])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return params(model)


def _loader(batch_size: int = 8) -> torch.utils.data.DataLoader:
    x, y = make_data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def _train(accelerator: Any, model: nn.Module, epochs: int = 2, batch_size: int = 8) -> tuple[nn.Module, list[float]]:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model, optimizer, loader = accelerator.prepare(model, optimizer, _loader(batch_size))
    losses = []
    for _ in range(epochs):
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            losses.append(loss.item())
    return model, losses


def _grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- #
# test_ddp.py: numerical oracle, wrapping, accumulation, teardown
# --------------------------------------------------------------------------- #


def oracle_worker() -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from plait import Accelerator

    out: dict[str, Any] = {}
    accelerator = Accelerator()  # no backend named: more than one process, so ddp
    out["backend"] = accelerator.backend
    out["distributed_type"] = str(accelerator.distributed_type)
    out["backend_options_type"] = type(accelerator.backend_options).__qualname__
    original = make_model()
    model, _ = _train(accelerator, original)
    out["is_ddp"] = isinstance(model, DistributedDataParallel)
    out["unwrap_is_original"] = accelerator.unwrap_model(model) is original
    out["plain"] = params(accelerator.unwrap_model(model))

    # Gradient accumulation (k=2) with a second accelerator in the same process group.
    acc = Accelerator(gradient_accumulation_steps=2)
    original = make_model()
    optimizer = torch.optim.SGD(original.parameters(), lr=LR)
    model, optimizer, loader = acc.prepare(original, optimizer, _loader(8))
    out["accum_is_ddp"] = isinstance(model, DistributedDataParallel)
    sync_flags, grads_at = [], {}
    for epoch in range(2):
        for step, (x, y) in enumerate(loader):
            with acc.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                acc.backward(loss)
                if epoch == 0 and step in (0, 1):
                    grads_at[step] = _grads(acc.unwrap_model(model))
                optimizer.step()
                optimizer.zero_grad()
            if epoch == 0:
                sync_flags.append(acc.sync_gradients)
    out["accum"] = params(acc.unwrap_model(model))
    out["accum_sync_flags"] = sync_flags
    out["grads_nonsync"] = grads_at[0]
    out["grads_sync"] = grads_at[1]

    out["initialized_before_end"] = dist.is_initialized()
    acc.end_training()
    out["initialized_after_end"] = dist.is_initialized()
    accelerator.end_training()  # a second end_training is harmless
    out["initialized_after_second_end"] = dist.is_initialized()
    return out


# --------------------------------------------------------------------------- #
# test_ddp.py: the ddp: section (PLAIT_DDP is set by the test for this launch)
# --------------------------------------------------------------------------- #


def options_worker() -> dict[str, Any]:
    import dataclasses

    from plait import Accelerator
    from plait_ddp import DDPOptions

    out: dict[str, Any] = {}
    out["single_error"] = error_of(lambda: Accelerator(backend="single"))

    # PLAIT_DDP='{"find_unused_parameters": true, "bucket_cap_mb": 1}' from the environment.
    acc = Accelerator(backend="ddp")
    out["env_options"] = dataclasses.asdict(acc.backend_options)
    branchy = Branchy()
    unused_before = params(branchy.unused)
    model, _ = _train(acc, branchy, epochs=1)
    out["env_find_unused_attr"] = model.find_unused_parameters
    out["env_bucket_bytes_cap"] = model.bucket_bytes_cap
    out["env_params_used"] = params(acc.unwrap_model(model).used)
    out["env_params_unused_before"] = unused_before
    out["env_params_unused_after"] = params(acc.unwrap_model(model).unused)

    # A dict of backend_options merges over the section: bf16 compression keeps find_unused_parameters.
    acc = Accelerator(backend_options={"comm_hook": "bf16"})
    out["bf16_options"] = dataclasses.asdict(acc.backend_options)
    try:
        model, losses = _train(acc, make_model())
        out["bf16_error"] = None
        out["bf16_params"] = params(acc.unwrap_model(model))
        out["bf16_losses"] = losses
    except Exception as exc:  # reported by the test (same on every rank: the group stays usable)
        out["bf16_error"] = f"{type(exc).__name__}: {exc}"

    # A DDPOptions object replaces the section.
    acc = Accelerator(backend_options=DDPOptions(comm_hook="fp16"))
    out["fp16_options"] = dataclasses.asdict(acc.backend_options)
    model, losses = _train(acc, make_model())
    out["fp16_find_unused_attr"] = model.find_unused_parameters
    out["fp16_params"] = params(acc.unwrap_model(model))
    out["fp16_losses"] = losses

    # Without find_unused_parameters the same branchy model fails at its second step (DDP's own error).
    acc = Accelerator(backend_options={"find_unused_parameters": False})
    try:
        model, _ = _train(acc, Branchy(), epochs=1)
        out["off_error"] = None
    except RuntimeError as exc:
        out["off_error"] = str(exc)
    acc.end_training()
    return out


# --------------------------------------------------------------------------- #
# test_collectives.py
# --------------------------------------------------------------------------- #


def collectives_worker(directory: str) -> dict[str, Any]:
    from plait import Accelerator

    acc = Accelerator()
    r, n = acc.process_index, acc.num_processes
    out: dict[str, Any] = {
        "rank_env": int(os.environ["RANK"]),
        "process_index": r,
        "local_process_index": acc.local_process_index,
        "num_processes": n,
        "is_main_process": acc.is_main_process,
        "is_local_main_process": acc.is_local_main_process,
        "is_last_process": acc.is_last_process,
        "use_distributed": acc.use_distributed,
    }

    nested = {
        "a": torch.tensor([r, r + 10]),
        "b": [torch.full((2, 3), float(r)), (torch.tensor(float(r) * 2),)],
    }
    out["gather"] = acc.gather(nested)

    to_reduce = {"x": torch.tensor([r + 1.0, -2.0 * r]), "y": [(torch.tensor(float(r)),)]}
    out["reduce_sum"] = acc.reduce(to_reduce, "sum")
    out["reduce_mean"] = acc.reduce(to_reduce, "mean")
    out["reduce_max"] = acc.reduce(to_reduce, reduction="max")
    out["reduce_sum_scaled"] = acc.reduce(to_reduce, "sum", scale=0.5)
    out["reduce_input_after"] = to_reduce  # reduce must not change its input

    ragged = torch.full((r + 1, 2), float(r + 1))
    out["pad"] = acc.pad_across_processes(ragged, pad_index=-1)
    out["pad_first"] = acc.pad_across_processes(ragged, pad_index=-1, pad_first=True)
    out["pad_dim1"] = acc.pad_across_processes({"t": torch.ones(2, r + 1)}, dim=1)
    out["pad_then_gather"] = acc.gather(acc.pad_across_processes([ragged], pad_index=-1))

    out["broadcast_from_1"] = acc.broadcast({"t": torch.full((3,), float(r)), "l": [torch.tensor([r, r])]}, from_process=1)
    out["broadcast_from_0"] = acc.broadcast(torch.tensor([r * 1.5]))
    out["broadcast_object_list"] = acc.broadcast_object_list([f"from {r}", {"rank": r}], from_process=1)
    out["broadcast_object_list_0"] = acc.broadcast_object_list([r])
    out["gather_object"] = acc.gather_object({"rank": r})
    out["gather_object_list"] = acc.gather_object([r, r * 10])

    items = list(range(7))
    with acc.split_between_processes(items) as share:
        out["split_list"] = share
    with acc.split_between_processes(items, apply_padding=True) as share:
        out["split_list_padded"] = share
    with acc.split_between_processes(torch.arange(7)) as share:
        out["split_tensor"] = share
    with acc.split_between_processes(torch.arange(7), apply_padding=True) as share:
        out["split_tensor_padded"] = share
    with acc.split_between_processes({"a": items, "b": list("abcdefg")}) as share:
        out["split_dict"] = share

    # main_process_first: the main process writes a file; every other process reads it inside the block.
    shared = Path(directory) / "written_by_main.txt"
    with acc.main_process_first():
        entered = time.time()
        if acc.is_main_process:
            time.sleep(0.5)
            shared.write_text("made once")
        out["main_first_read"] = shared.read_text() if shared.exists() else None
        left = time.time()
    out["main_first_times"] = (entered, left)

    # wait_for_everyone: nobody passes before the slowest process arrives.
    time.sleep(0.3 * r)
    arrived = time.time()
    acc.wait_for_everyone()
    out["barrier_times"] = (arrived, time.time())

    ran: list[str] = []

    @acc.on_main_process
    def main_only() -> str:
        ran.append("main")
        return "main"

    @acc.on_process(process_index=1)
    def second_only() -> str:
        ran.append("process1")
        return "process1"

    @acc.on_last_process
    def last_only() -> str:
        ran.append("last")
        return "last"

    @acc.on_local_main_process
    def local_main_only() -> str:
        ran.append("local_main")
        return "local_main"

    def plain() -> str:
        ran.append("decorated_later")
        return "decorated_later"

    out["decorator_results"] = [main_only(), second_only(), last_only(), local_main_only(),
                                acc.on_process(plain, process_index=n - 1)()]
    out["ran"] = ran

    if acc.config.debug:
        # Mismatched shapes are an error on every rank (not a hang), and the group stays usable.
        out["debug_gather_error"] = error_of(lambda: acc.gather(torch.zeros(r + 1, 2)))
        out["debug_reduce_error"] = error_of(lambda: acc.reduce(torch.zeros(3 + r)))
        dtype = torch.float32 if r == 0 else torch.float64
        out["debug_broadcast_error"] = error_of(lambda: acc.broadcast(torch.zeros(2, dtype=dtype)))
        out["after_debug_errors"] = acc.gather(torch.tensor([r]))
    acc.end_training()
    return out


# --------------------------------------------------------------------------- #
# test_resume.py: exact resume of a 2-process run
# --------------------------------------------------------------------------- #


class NoisyDataset(torch.utils.data.Dataset):
    """Draws from the global torch RNG when an item is loaded, like a random augmentation."""

    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(n, 8, generator=g)
        self.y = self.x.sum(dim=1, keepdim=True) + 0.1 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i] + 0.01 * torch.randn(8), self.y[i]


EPOCHS = 3


def _resumable_run(mode: str, checkpoint: str, accum: int, save_at: int) -> dict[str, Any]:
    """HF Accelerate's resume protocol on 2 processes: shuffled loader, dropout, a scheduler, AdamW.

    ``full``: train every epoch. ``interrupt``: stop after global step ``save_at`` with save_state.
    ``resume``: load_state, skip_first_batches for the interrupted epoch, plain iteration later.
    """
    import random

    import numpy as np

    from plait import Accelerator, set_seed

    set_seed(42, device_specific=True)  # every process draws different dropout masks and noise
    acc = Accelerator(gradient_accumulation_steps=accum)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.8)
    loader = torch.utils.data.DataLoader(NoisyDataset(50), batch_size=4, shuffle=True)
    model, optimizer, loader, scheduler = acc.prepare(model, optimizer, loader, scheduler)

    out: dict[str, Any] = {"batches_per_epoch": len(loader)}
    starting_epoch, resume_step, global_step = 0, None, 0
    if mode == "resume":
        acc.load_state(checkpoint)
        global_step = save_at
        starting_epoch = global_step // len(loader)
        resume_step = global_step - starting_epoch * len(loader)

    seen: list[list[float]] = []
    for epoch in range(starting_epoch, EPOCHS):
        model.train()
        active = acc.skip_first_batches(loader, resume_step) if resume_step is not None and epoch == starting_epoch else loader
        for x, y in active:
            with acc.accumulate(model):
                scale = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
                loss = nn.functional.mse_loss(model(x), y) * scale
                acc.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            global_step += 1
            seen.append(y[:, 0].tolist())
            if mode == "interrupt" and global_step == save_at:
                out["saved"] = acc.save_state(checkpoint)
                out["seen"] = seen
                return out
    out["params"] = params(acc.unwrap_model(model))
    out["seen"] = seen
    out["global_step"] = global_step
    return out


def resume_first_launch(root: str, configs: list[tuple[str, int, int]]) -> dict[str, Any]:
    """For each (name, accum, save_at): the uninterrupted run, then the interrupted one (which saves and stops).

    Records which files each rank wrote through the checkpoint writer.
    """
    from plait import checkpoint

    written: list[str] = []
    original_files = checkpoint.CheckpointWriter.files

    def recording_files(self: Any) -> dict[str, Any]:
        files = original_files(self)  # what this rank's writer wrote, with checksums
        written.extend(files)
        return files

    checkpoint.CheckpointWriter.files = recording_files  # type: ignore[method-assign]
    out: dict[str, Any] = {}
    for name, accum, save_at in configs:
        out[f"{name}/full"] = _resumable_run("full", "", accum, save_at)
        written.clear()
        out[f"{name}/interrupt"] = _resumable_run("interrupt", str(Path(root) / name), accum, save_at)
        out[f"{name}/written"] = list(written)
        out[f"{name}/leftovers"] = sorted(p.name for p in Path(root).iterdir() if p.name.startswith("."))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return out


def resume_second_launch(root: str, configs: list[tuple[str, int, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, accum, save_at in configs:
        out[name] = _resumable_run("resume", str(Path(root) / name), accum, save_at)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return out
