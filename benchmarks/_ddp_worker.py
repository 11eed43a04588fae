"""Worker of ``ddp.py``, run on 2 processes by torchrun (gloo): a training loop, or gather latency.

    python -m torch.distributed.run --standalone --nproc-per-node=2 _ddp_worker.py train CONTENDER STEPS WARMUP OUT
    python -m torch.distributed.run --standalone --nproc-per-node=2 _ddp_worker.py gather ROUNDS WARMUP SEED OUT

``train``: one contender's loop (only its library is imported): raw PyTorch
(DistributedDataParallel + DistributedSampler; ``raw_control`` is the same again),
plait (``Accelerator()``) or HF Accelerate (``Accelerator(cpu=True)``; the runner sets
``ACCELERATE_USE_CPU=1``). Rank 0 writes ``{"steps_per_s"}`` over STEPS steps after WARMUP.

``gather``: in the same two processes, ``accelerator.gather(t)`` and the collective it
wraps, called by hand as gather must (a new output tensor, then
``all_gather_single``/``all_gather_into_tensor``), twice (``raw`` and ``raw_control``),
taking turns call by call in an order drawn for each round (the same draw on both
ranks, so the collectives match). Each call is timed; a call's time is the slower
rank's. Rank 0 writes ``{numel: {contender: [us per call]}}``.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

BATCH = 64
#: Elements of float32 per process, and the share of ROUNDS each size gets (the large one is slower per call).
GATHER_SIZES = ((16, 1.0), (262144, 0.25))


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 512), torch.nn.ReLU(),
                               torch.nn.Linear(512, 1))


def train(contender: str, steps: int, warmup: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n = BATCH * (steps + warmup) * 2
    data = TensorDataset(torch.randn(n, 256), torch.randn(n, 1))
    model: Any = _model()
    optimizer: Any = torch.optim.SGD(model.parameters(), lr=0.01)
    backward: Callable[[torch.Tensor], None]
    barrier: Callable[[], Any]
    if contender in ("raw", "raw_control"):
        dist.init_process_group("gloo")
        loader: Any = DataLoader(data, batch_size=BATCH, sampler=DistributedSampler(data, shuffle=True))
        model = torch.nn.parallel.DistributedDataParallel(model)

        def backward(loss: torch.Tensor) -> None:
            loss.backward()

        barrier, rank = dist.barrier, dist.get_rank()
    else:
        accelerator: Any
        if contender == "plait":
            from plait import Accelerator

            accelerator = Accelerator()
        elif contender == "accelerate":
            import accelerate

            accelerator = accelerate.Accelerator(cpu=True)
        else:
            raise ValueError(f"unknown contender {contender!r}")
        loader = DataLoader(data, batch_size=BATCH, shuffle=True)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        backward, barrier, rank = accelerator.backward, accelerator.wait_for_everyone, accelerator.process_index
    start = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == warmup:
            barrier()
            start = time.perf_counter()
        loss = torch.nn.functional.mse_loss(model(x), y)
        backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        if i + 1 == warmup + steps:
            break
    barrier()
    elapsed = time.perf_counter() - start
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"steps_per_s": steps / elapsed}, f)
    # The raw contenders leave the group to the process's exit: destroy_process_group with the DDP model
    # alive hung on one rank in 1 of 5 launches here (a futex wait in the gloo group's shutdown).


def gather(rounds: int, warmup: int, seed: int, out: str) -> None:
    from plait import Accelerator

    torch.set_num_threads(1)
    accelerator = Accelerator()
    world, rank = accelerator.num_processes, accelerator.process_index
    collective = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    results: dict[int, dict[str, list[float]]] = {}
    clock = time.perf_counter_ns
    for numel, share in GATHER_SIZES:
        tensor = torch.full((numel,), float(rank))

        def by_hand(tensor: torch.Tensor = tensor) -> torch.Tensor:
            # What gather itself must do: a new output (it returns a new tensor), then the one collective.
            output = tensor.new_empty((world * tensor.shape[0], *tensor.shape[1:]))
            collective(output, tensor)
            return output

        def plait_gather(tensor: torch.Tensor = tensor) -> torch.Tensor:
            gathered: torch.Tensor = accelerator.gather(tensor)
            return gathered

        calls: dict[str, Callable[[], torch.Tensor]] = {"raw": by_hand, "raw_control": by_hand, "plait": plait_gather}
        if not torch.equal(by_hand(), plait_gather()):
            raise AssertionError("accelerator.gather and the collective by hand disagree")
        draw = random.Random(seed * 1_000_003 + numel)  # the same order on every rank
        order = list(calls)
        times: dict[str, list[float]] = {name: [] for name in calls}
        n = max(1, int(rounds * share))
        for r in range(warmup + n):
            draw.shuffle(order)
            for name in order:
                start = clock()
                calls[name]()
                elapsed = clock() - start
                if r >= warmup:
                    times[name].append(elapsed / 1000)
        every: list[Any] = [None] * world
        dist.all_gather_object(every, times)
        results[numel] = {name: [max(t[name][i] for t in every) for i in range(n)] for name in calls}
    if accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump(results, f)
    accelerator.end_training()


def main(argv: list[str]) -> None:
    if argv[0] == "train":
        train(argv[1], int(argv[2]), int(argv[3]), argv[4])
    elif argv[0] == "gather":
        gather(int(argv[1]), int(argv[2]), int(argv[3]), argv[4])
    else:
        raise SystemExit(f"unknown command {argv[0]!r}: expected train or gather")


if __name__ == "__main__":
    main(sys.argv[1:])
