"""Worker: one contender's checkpoint save and load of a model with AdamW state, on the runner's command.

``main(channel, contender, width, layers)`` runs in a fresh process (see ``_common.Worker``). The model is a stack of LAYERS ``Linear(WIDTH, WIDTH)`` in fp32 (24 x 2048 is
100.7M parameters), prepared with an AdamW optimizer that has taken one step, so
that its state (two fp32 tensors per parameter) exists.

- raw: ``safetensors.torch.save_file`` of the model state dict and ``torch.save`` of
  the optimizer state dict; loading is ``load_file`` + ``torch.load(weights_only=True)``,
  each followed by ``load_state_dict`` (as the two accelerators do).
- plait / accelerate: ``accelerator.save_state(dir)`` / ``accelerator.load_state(dir)``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from _common import Channel, serve


def directory_bytes(path: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def main(channel: Channel, contender: str, width_text: str, layers_text: str) -> None:
    width, layers = int(width_text), int(layers_text)
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    parameters = sum(p.numel() for p in model.parameters())
    accelerator: Any = None
    if contender == "plait":
        from plait import Accelerator

        accelerator = Accelerator(cpu=True)
    elif contender == "accelerate":
        from accelerate import Accelerator  # type: ignore[no-redef]

        accelerator = Accelerator(cpu=True)
    elif contender != "raw":
        raise ValueError(f"unknown contender {contender!r}")
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
    loss = model(torch.randn(4, width)).square().mean()
    if accelerator is not None:
        accelerator.backward(loss)
    else:
        loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    if contender == "raw":
        from safetensors.torch import load_file, save_file

        def save(directory: Path) -> None:
            directory.mkdir(parents=True)
            save_file(model.state_dict(), str(directory / "model.safetensors"), metadata={"format": "pt"})
            torch.save(optimizer.state_dict(), directory / "optimizer.bin")

        def load(directory: Path) -> None:
            model.load_state_dict(load_file(str(directory / "model.safetensors")))
            optimizer.load_state_dict(torch.load(directory / "optimizer.bin", map_location="cpu", weights_only=True))

    else:

        def save(directory: Path) -> None:
            accelerator.save_state(str(directory))

        def load(directory: Path) -> None:
            accelerator.load_state(str(directory))

    def timed_save(path: str) -> dict[str, Any]:
        target = Path(path)
        if target.exists():
            raise FileExistsError(f"{target} exists: the runner gives a fresh directory to each save")
        start = time.perf_counter()
        save(target)
        seconds = time.perf_counter() - start
        written, files = directory_bytes(target)
        return {"seconds": seconds, "bytes": written, "files": files}

    def timed_load(path: str) -> dict[str, Any]:
        start = time.perf_counter()
        load(Path(path))
        return {"seconds": time.perf_counter() - start}

    serve(
        channel,
        {"save": timed_save, "load": timed_load},
        {"ready": True, "parameters": parameters, "pid": os.getpid()},
    )

