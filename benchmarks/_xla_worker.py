"""One run of the xla benchmark: the MLP's training steps under plait's xla backend on XLA's CPU device, or the
same loop in eager PyTorch on the CPU. Writes its numbers as JSON to the file named last.

    python _xla_worker.py xla|eager ACCUMULATION WARMUP STEPS OUT
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

BATCH, WIDTH = 64, 512


def mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(WIDTH, WIDTH), torch.nn.GELU(), torch.nn.Linear(WIDTH, WIDTH),
                               torch.nn.GELU(), torch.nn.Linear(WIDTH, 10))


def data(micro_steps: int) -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH * micro_steps, WIDTH, generator=generator)
    y = torch.randint(0, 10, (BATCH * micro_steps,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def compiled() -> int:
    """Graphs torch_xla compiled so far (its CompileTime metric counts one sample per compilation)."""
    import torch_xla.debug.metrics as met

    found = met.metric_data("CompileTime")
    return int(found[0]) if found else 0


def run_xla(accumulation: int, warmup: int, steps: int) -> dict[str, Any]:
    import torch_xla

    import plait

    accelerator = plait.Accelerator(backend="xla", gradient_accumulation_steps=accumulation)
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = data((warmup + steps) * accumulation)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    times: list[float] = []
    graphs_after_warmup = 0
    step, started = 0, time.perf_counter()
    for x, y in loader:
        with accelerator.accumulate(model):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        if accelerator.sync_gradients:
            step += 1
            if step == warmup:
                torch_xla.sync()
                graphs_after_warmup = compiled()
            if step > warmup:
                loss.item()  # waits for the step's graph: the time is the step's, not its tracing
            now = time.perf_counter()
            times.append(now - started)
            started = now
    return {"step_s": times[warmup:], "graphs_after_warmup": graphs_after_warmup, "graphs_at_end": compiled(),
            "steps": step, "device": str(accelerator.device)}


def run_eager(accumulation: int, warmup: int, steps: int) -> dict[str, Any]:
    model = mlp()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times: list[float] = []
    started = time.perf_counter()
    for index, (x, y) in enumerate(data((warmup + steps) * accumulation)):
        loss = torch.nn.functional.cross_entropy(model(x), y) / accumulation
        loss.backward()
        if (index + 1) % accumulation == 0:
            optimizer.step()
            optimizer.zero_grad()
            loss.item()
            now = time.perf_counter()
            times.append(now - started)
            started = now
    return {"step_s": times[warmup:], "steps": len(times), "device": "cpu"}


if __name__ == "__main__":
    mode, accumulation, warmup, steps, out = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
    result = (run_xla if mode == "xla" else run_eager)(accumulation, warmup, steps)
    Path(out).write_text(json.dumps(result))
