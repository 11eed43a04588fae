"""Worker scripts of the xla tests, run as a user runs them (``python xla_workers.py SCENARIO OUT``, or
under ``plait launch``): each trains a model and writes its numbers as JSON to OUT (one file per rank).

Scenarios: ``single`` (one XLA device against eager CPU, accumulation, gather_for_metrics, clipping, bf16,
compiled graphs, a checkpoint saved mid-epoch), ``resume`` (that checkpoint loaded in a fresh process),
``spmd`` (two CPU devices, one process), ``ranks`` (one process per device under torchrun).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

STEPS = 20
LR = 0.05


def dataset(samples: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(1234)
    x = torch.randn(samples, 8, generator=generator)
    y = x @ torch.randn(8, 1, generator=generator) + 0.1 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(x, y)


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def eager(batch: int, steps: int, momentum: float = 0.0) -> dict[str, torch.Tensor]:
    """The oracle: plain PyTorch on the CPU, no plait."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    loader = DataLoader(dataset(batch * steps), batch_size=batch)
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].cpu().double() - b[k].cpu().double()).abs().max()) for k in a)


def train(accelerator: Any, batch: int, steps: int, momentum: float = 0.0, samples: int | None = None,
          record: list[int] | None = None, inspect: Any = None) -> dict[str, torch.Tensor]:
    """The user's loop under plait; ``record`` gets the number of graphs compiled after each optimizer step."""
    import torch_xla.debug.metrics as met

    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=momentum)
    loader = DataLoader(dataset(samples or batch * steps * accelerator.gradient_accumulation_steps), batch_size=batch)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if inspect is not None:
        inspect(model)
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        if record is not None and accelerator.sync_gradients:
            data = met.metric_data("CompileTime")
            record.append(int(data[0]) if data else 0)
    return accelerator.get_state_dict(model)


def write(out: str, result: dict[str, Any]) -> None:
    rank = os.environ.get("RANK", "0")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.{rank}.json").write_text(json.dumps(result))


# ---------------------------------------------------------------------------- scenarios
def single(out: str) -> None:
    import torch_xla

    import plait
    from plait.errors import ConfigError

    result: dict[str, Any] = {}
    accelerator = plait.Accelerator(backend="xla")
    result["device"] = str(accelerator.device)
    result["distributed_type"] = str(accelerator.distributed_type)
    result["num_processes"] = accelerator.num_processes
    graphs: list[int] = []
    trained = train(accelerator, batch=8, steps=STEPS, record=graphs)
    result["vs_eager"] = max_difference(trained, eager(8, STEPS))
    result["state_dict_devices"] = sorted({str(t.device) for t in trained.values()})
    result["graphs"] = graphs

    accelerator.free_memory()
    accumulated = plait.Accelerator(backend="xla", gradient_accumulation_steps=4)
    micro_graphs: list[int] = []
    result["accumulation_vs_4x_batch"] = max_difference(
        train(accumulated, batch=4, steps=10, momentum=0.9, record=micro_graphs), eager(16, 10, momentum=0.9))
    result["accumulation_graphs"] = micro_graphs

    # gather_for_metrics: 20 samples in batches of 8, the last one short.
    evaluator = plait.Accelerator(backend="xla")
    loader = evaluator.prepare(DataLoader(dataset(20), batch_size=8))
    seen = [evaluator.gather_for_metrics(x).cpu() for x, _ in loader]
    result["gathered_equal"] = bool(torch.equal(torch.cat(seen), dataset(20).tensors[0]))

    # clip_grad_norm_ returns the norm eager PyTorch computes, and clips to it.
    model, reference = mlp(), mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model, optimizer = evaluator.prepare(model, optimizer)
    x, y = dataset(8).tensors
    evaluator.backward(torch.nn.functional.mse_loss(model(x.to(evaluator.device)), y.to(evaluator.device)) * 100)
    norm = evaluator.clip_grad_norm_(model.parameters(), 0.5)
    torch.nn.functional.mse_loss(reference(x), y).mul(100).backward()
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    result["clip_norm"] = [float(norm.cpu()), float(expected)]
    # save_model: HF-style weights, CPU tensors under the user's key names, equal to the model's.
    from safetensors.torch import load_file

    exported = Path(out).parent / "exported"
    evaluator.save_model(model, exported)
    saved = load_file(exported / "model.safetensors")
    unwrapped = evaluator.unwrap_model(model)
    result["save_model"] = [sorted(saved) == sorted(unwrapped.state_dict()),
                            max_difference(saved, unwrapped.state_dict())]
    result["clipped_grads"] = max(float((p.grad.cpu() - r.grad).abs().max())
                                  for p, r in zip(model.parameters(), reference.parameters()))

    # bf16: autocast on the XLA device; the prepared forward's output comes back in fp32.
    bf16 = plait.Accelerator(backend="xla", mixed_precision="bf16")
    model = bf16.prepare(mlp())
    with bf16.autocast():
        product = torch.ones(4, 4, device=bf16.device) @ torch.ones(4, 4, device=bf16.device)
    output = model(x.to(bf16.device))
    result["bf16"] = [str(product.dtype), str(output.dtype), float((output.cpu() - mlp()(x)).abs().max())]
    torch_xla.sync()
    try:
        plait.Accelerator(backend="xla", mixed_precision="fp16")
        result["fp16_error"] = None
    except ConfigError as error:
        result["fp16_error"] = str(error)
    write(out, result)


def checkpoint(out: str, directory: str, resume: bool, accumulation: int) -> None:
    """Train 12 batches of a model with dropout (XLA's generator) and momentum (the optimizer has state),
    saving after batch 5 mid-epoch (with accumulation of 2, between two micro-steps: the gradients so far are
    saved too); ``resume`` starts a fresh process from that checkpoint and trains the rest."""
    import plait

    accelerator = plait.Accelerator(backend="xla", gradient_accumulation_steps=accumulation)
    torch.manual_seed(0)  # dropout draws from XLA's generator: a resume must restore it too
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Dropout(0.5), torch.nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    loader = DataLoader(dataset(96), batch_size=8, shuffle=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    start = 0
    if resume:
        accelerator.load_state(directory)
        start = 5
        loader = accelerator.skip_first_batches(loader, start)
    step = start
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        step += 1
        if step == 5 and not resume:
            accelerator.save_state(directory)
    state = accelerator.get_state_dict(model)
    write(out, {"steps": step, "state": {k: v.flatten().tolist() for k, v in state.items()},
                "files": sorted(os.listdir(directory))})


def spmd(out: str) -> None:
    import torch_xla
    import torch_xla.runtime as xr

    import plait

    result: dict[str, Any] = {}
    accelerator = plait.Accelerator(backend="xla")  # spmd comes from the launch flag (PLAIT_XLA)
    result["spmd"] = bool(xr.is_spmd())
    result["devices"] = xr.global_runtime_device_count()
    result["num_processes"] = accelerator.num_processes
    graphs: list[int] = []
    trained = train(accelerator, batch=16, steps=10, record=graphs)
    result["vs_eager_batch_16"] = max_difference(trained, eager(16, 10))
    result["graphs"] = graphs
    loader = accelerator.prepare(DataLoader(dataset(20), batch_size=8))
    shardings, seen = [], []
    for x, _ in loader:
        shardings.append(torch_xla._XLAC._get_xla_sharding_spec(x))
        seen.append(accelerator.gather_for_metrics(x).cpu())
    result["batch_shardings"] = shardings
    result["gathered_equal"] = bool(torch.equal(torch.cat(seen), dataset(20).tensors[0]))
    try:  # FSDPv2: parameters sharded over the mesh
        fsdp = plait.Accelerator(backend="xla", backend_options={"spmd": True, "fsdp": True})
        sharded: list[str] = []

        def shardings(model: torch.nn.Module) -> None:
            sharded.extend(torch_xla._XLAC._get_xla_sharding_spec(p) for p in model.parameters())

        result["fsdp_vs_eager_batch_16"] = max_difference(train(fsdp, batch=16, steps=10, inspect=shardings),
                                                          eager(16, 10))
        result["fsdp_parameter_shardings"] = sharded
    except Exception as error:  # reported, and the test says what happened
        result["fsdp_error"] = f"{type(error).__name__}: {error}"
    write(out, result)


def ranks(out: str) -> None:
    import plait
    from plait.errors import PluginError

    accelerator = plait.Accelerator()  # backend xla from `plait launch --backend xla`
    loader = accelerator.prepare(DataLoader(dataset(24), batch_size=4))
    batches = list(loader)
    rows = [x.cpu() for x, _ in batches]
    full = dataset(24).tensors[0]
    indices = [int((full == row).all(dim=1).nonzero()[0]) for batch in rows for row in batch]
    result: dict[str, Any] = {
        "rank": accelerator.process_index, "world": accelerator.num_processes,
        "local_rank": accelerator.local_process_index, "device": str(accelerator.device),
        "batch_devices": sorted({str(x.device) for x, _ in batches}),
        "indices": indices,
        "distributed_type": str(accelerator.distributed_type),
    }
    try:
        accelerator.gather(torch.ones(1, device=accelerator.device))
        result["collective_error"] = None
    except PluginError as error:
        result["collective_error"] = str(error)
    write(out, result)
    sys.exit(int(os.environ.get("XLA_TEST_EXIT_CODE", "0")) if accelerator.process_index == 1 else 0)


if __name__ == "__main__":
    scenario, target = sys.argv[1], sys.argv[2]
    if scenario == "single":
        single(target)
    elif scenario in ("save", "resume"):
        checkpoint(target, sys.argv[3], scenario == "resume", int(sys.argv[4]))
    elif scenario == "spmd":
        spmd(target)
    elif scenario == "ranks":
        ranks(target)
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
