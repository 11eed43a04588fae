"""Worker: one contender's prepared training loop, timed in blocks of epochs on the runner's command.

``main(channel, contender, model, accumulation, warmup_epochs[, rotation])`` runs in a fresh process
(see ``_common.Worker``). CONTENDER is raw, plait or accelerate (only that library is imported), or paired: plait's loop
and two raw ones in one process, each on its own identical copy of the model and data, taking turns step by step
(``interleave``; its ``run`` times plait's loop alone); MODEL is
tiny (Linear(32, 1), batch 8) or mlp (3 x [Linear(512, 512), ReLU], batch 64).
Every contender does the same work per batch: iterate a shuffling DataLoader over
a TensorDataset, forward, MSE loss, backward, optimizer step, zero_grad, on one
thread. With ACCUMULATION k > 1 the optimizer steps every k batches and on the
last batch of the epoch: through ``accelerator.accumulate(model)`` for plait and
Accelerate, by hand for raw PyTorch (loss / k, step when due).
"""

from __future__ import annotations

import random
import time
from typing import Any

from _common import Channel, serve

#: name: (input width, output width, hidden layers, batch size, batches per epoch). The batch
#: counts are not multiples of 4, so that accumulation also syncs on a short last group.
MODELS = {
    "tiny": (32, 1, 0, 8, 250),
    "mlp": (512, 512, 3, 64, 50),
}
SEED = 1234


def build(model_name: str) -> tuple[Any, Any, Any]:
    import torch

    width_in, width_out, layers, batch, batches = MODELS[model_name]
    torch.manual_seed(SEED)
    model: torch.nn.Module
    if layers == 0:
        model = torch.nn.Linear(width_in, width_out)
    else:
        modules: list[torch.nn.Module] = []
        for _ in range(layers):
            modules += [torch.nn.Linear(width_in, width_in), torch.nn.ReLU()]
        model = torch.nn.Sequential(*modules)
    data = torch.utils.data.TensorDataset(torch.randn(batch * batches, width_in), torch.randn(batch * batches, width_out))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    return model, optimizer, loader


def raw_epoch(model: Any, optimizer: Any, loader: Any, accumulation: int) -> Any:
    import torch

    mse = torch.nn.functional.mse_loss
    if accumulation == 1:

        def epoch() -> None:
            for x, y in loader:
                loss = mse(model(x), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()

        return epoch

    def epoch_accumulating() -> None:
        last = len(loader)
        for i, (x, y) in enumerate(loader, start=1):
            loss = mse(model(x), y) / accumulation
            loss.backward()
            if i % accumulation == 0 or i == last:
                optimizer.step()
                optimizer.zero_grad()

    return epoch_accumulating


def accelerator_epoch(accelerator: Any, model: Any, optimizer: Any, loader: Any, accumulation: int) -> Any:
    import torch

    mse = torch.nn.functional.mse_loss
    if accumulation == 1:

        def epoch() -> None:
            for x, y in loader:
                loss = mse(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()

        return epoch

    def epoch_accumulating() -> None:
        for x, y in loader:
            with accelerator.accumulate(model):
                loss = mse(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()

    return epoch_accumulating


def interleaved(accelerator: Any, raw_copies: dict[str, tuple[Any, Any, Any]], prepared_model: Any,
                prepared_optimizer: Any, prepared_loader: Any, accumulation: int) -> Any:
    """One epoch in which plait's loop and raw ones take turns step by step, each step timed.

    RAW_COPIES names raw loops (``raw`` and ``raw_control``), each with its own copy of
    the model, optimizer and loader, as plait's loop has. At each step every loop runs
    once, in an order drawn for that step; a step's time includes fetching its batch.
    Noise that lasts longer than a few steps (another tenant, the clock) hits a step's
    loops alike, and the second raw copy is an A/A control of what remains (the copies'
    memory layout, order effects). Returns the epoch function, which returns each loop's
    per-step times (us).
    """
    import torch

    mse = torch.nn.functional.mse_loss
    clock = time.perf_counter

    def raw_step(model: Any, optimizer: Any, i: int, last: int, x: Any, y: Any) -> None:
        loss = mse(model(x), y) / accumulation
        loss.backward()
        if i % accumulation == 0 or i == last:
            optimizer.step()
            optimizer.zero_grad()

    def plait_step(x: Any, y: Any) -> None:
        with accelerator.accumulate(prepared_model):
            loss = mse(prepared_model(x), y)
            accelerator.backward(loss)
            prepared_optimizer.step()
            prepared_optimizer.zero_grad()

    # The order is drawn for each step: a fixed rotation would tie it to the step's index, and so to the
    # accumulation's synchronising steps (and a loop that ran just before is warmer).
    shuffle = random.Random(SEED).shuffle
    names = ["plait", *raw_copies]

    def epoch() -> dict[str, list[float]]:
        times: dict[str, list[float]] = {name: [] for name in names}
        batches = {name: iter(copy[2]) for name, copy in raw_copies.items()}
        plait_batches = iter(prepared_loader)
        last = len(prepared_loader)
        order = list(names)
        for i in range(1, last + 1):
            shuffle(order)
            for name in order:
                if name == "plait":
                    start = clock()
                    plait_step(*next(plait_batches))
                else:
                    model, optimizer, _ = raw_copies[name]
                    start = clock()
                    raw_step(model, optimizer, i, last, *next(batches[name]))
                times[name].append((clock() - start) * 1e6)
        for _ in plait_batches:  # ends plait's pass (its epoch counter), as a for loop would
            raise AssertionError("the prepared loader has more batches than the raw ones")
        return times

    return epoch


def prepared_epoch(contender: str, model: Any, optimizer: Any, loader: Any, accumulation: int) -> tuple[Any, Any]:
    """CONTENDER's (plait or accelerate) epoch function over the prepared objects, and its prepared loader."""
    if contender == "plait":
        from plait import Accelerator
    elif contender == "accelerate":
        from accelerate import Accelerator  # type: ignore[no-redef]
    else:
        raise ValueError(f"unknown contender {contender!r}")
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    return accelerator_epoch(accelerator, model, optimizer, loader, accumulation), loader


def main(channel: Channel, contender: str, model_name: str, accumulation_text: str, warmup_text: str,
         rotation_text: str = "0") -> None:
    accumulation, warmup = int(accumulation_text), int(warmup_text)
    import torch

    torch.set_num_threads(1)
    interleave_epoch: Any = None
    if contender == "paired":
        # raw PyTorch (twice) and plait in one process, each on its own identical copy of the model,
        # optimizer and data (build is seeded): with accumulation, no loop may add to or zero another's
        # gradients. The copies are built in a rotating order (memory layout).
        from plait import Accelerator

        names = ["plait", "raw", "raw_control"]
        turn = int(rotation_text) % len(names)
        copies = {name: build(model_name) for name in names[turn:] + names[:turn]}
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
        model, optimizer, loader = accelerator.prepare(*copies.pop("plait"))
        interleave_epoch = interleaved(accelerator, copies, model, optimizer, loader, accumulation)
        epoch = accelerator_epoch(accelerator, model, optimizer, loader, accumulation)
        for copy in copies.values():
            warm = raw_epoch(*copy, accumulation)
            for _ in range(warmup):
                warm()
    elif contender == "raw":
        model, optimizer, loader = build(model_name)
        epoch = raw_epoch(model, optimizer, loader, accumulation)
    else:
        epoch, loader = prepared_epoch(contender, *build(model_name), accumulation)
    for _ in range(warmup):
        epoch()
    steps_per_epoch = len(loader)

    def interleave(epochs: int) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {}
        for _ in range(epochs):
            for loop, values in interleave_epoch().items():
                times.setdefault(loop, []).extend(values)
        return times

    def run(epochs: int) -> dict[str, Any]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            epoch()
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        return {"wall": wall, "cpu": cpu, "steps": epochs * steps_per_epoch}

    serve(channel, {"run": run, "interleave": interleave},
          {"ready": True, "steps_per_epoch": steps_per_epoch, "threads": torch.get_num_threads()})
