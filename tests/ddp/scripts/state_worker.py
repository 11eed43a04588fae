"""A worker of tests/ddp/test_state_processes.py, started by ``python -m torch.distributed.run``.

First without any Accelerator: ``PartialState()``, ``split_between_processes``, the free functions
of ``plait.utils`` (gather, broadcast, reduce, pad_across_processes, RNG synchronisation) and
``get_logger``; then an Accelerator (ddp), and LocalSGD on a model trained on different data on
each process. Writes ``<out>/rank<r>.pt`` (plain data) and ``<out>/log<r>.txt``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent.parent))
import ddp_workers as W

from plait import utils
from plait.state import AcceleratorState, PartialState

#: LocalSGD's run: steps between averages, steps in all, samples per step and process.
LOCAL_SGD_STEPS, STEPS, BATCH = 3, 7, 8


def local_batch(step: int, rank: int) -> slice:
    """The samples process ``rank`` trains on at ``step`` (each process its own)."""
    start = ((step * 2 + rank) * BATCH) % W.N_SAMPLES
    return slice(start, start + BATCH)


def splits(state: PartialState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, inputs in (("abc", ["A", "B", "C"]), ("seven", list(range(7))), ("tensor", torch.arange(7))):
        for padded in (False, True):
            with state.split_between_processes(inputs, apply_padding=padded) as share:
                out[f"{name}{'_padded' if padded else ''}"] = share.tolist() if isinstance(share, torch.Tensor) else share
    with state.split_between_processes({"a": list(range(5)), "b": list("abcde")}) as share:
        out["dict"] = share
    return out


def operations(rank: int) -> dict[str, Any]:
    x = torch.tensor([rank + 1.0, -2.0 * rank])
    out: dict[str, Any] = {
        "gather": utils.gather(torch.tensor([rank, rank + 10])),
        "gather_nested": utils.gather({"a": torch.full((2,), float(rank)), "b": [torch.tensor(rank * 1.0)]}),
        "gather_object": utils.gather_object([{"rank": rank}]),
        "broadcast": utils.broadcast(torch.full((3,), float(rank)), from_process=1),
        "broadcast_object_list": utils.broadcast_object_list([f"from {rank}", rank], from_process=1),
        "reduce_default": utils.reduce(x),
        "reduce_sum_scaled": utils.reduce(x, reduction="sum", scale=0.5),
        "reduce_max": utils.reduce(x, reduction="max"),
        "reduce_input_after": x,
        "pad": utils.pad_across_processes(torch.full((rank + 1, 2), float(rank + 1)), pad_index=-1),
        "pad_first": utils.pad_across_processes(torch.full((rank + 1, 2), float(rank + 1)), pad_index=-1, pad_first=True),
    }
    torch.manual_seed(100 + rank)
    out["rng_before"] = torch.get_rng_state()
    utils.synchronize_rng_states(["torch"])
    out["rng_draw"] = torch.rand(4)
    generator = torch.Generator().manual_seed(7 + rank)
    utils.synchronize_rng_states(["generator"], generator=generator)
    out["generator_draw"] = torch.rand(4, generator=generator)
    return out


def log(out: Path, rank: int) -> None:
    from plait.logging import get_logger

    handler = logging.FileHandler(out / f"log{rank}.txt")
    handler.setFormatter(logging.Formatter("%(created).6f %(message)s"))
    target = logging.getLogger("state_worker")
    target.addHandler(handler)
    target.propagate = False
    logger = get_logger("state_worker", log_level="INFO")
    logger.info("main only")
    logger.info("every process", main_process_only=False)
    if rank == 0:
        time.sleep(0.5)  # the main process comes late: in_order still has it log first
    logger.info("in order", in_order=True)
    handler.close()


def local_sgd(accelerator: Any, rank: int) -> dict[str, Any]:
    from plait.local_sgd import LocalSGD

    model = W.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=W.LR)
    model, optimizer = accelerator.prepare(model, optimizer)
    x, y = W.make_data()
    after_each_step = []
    with LocalSGD(accelerator, model, local_sgd_steps=LOCAL_SGD_STEPS) as local:
        for step in range(STEPS):
            batch = local_batch(step, rank)
            accelerator.backward(nn.functional.mse_loss(model(x[batch]), y[batch]))
            optimizer.step()
            optimizer.zero_grad()
            local.step()
            after_each_step.append(W.params(accelerator.unwrap_model(model)))
    return {"local_sgd_steps": after_each_step, "local_sgd_exit": W.params(accelerator.unwrap_model(model)),
            "local_sgd_enabled": local.enabled}


def main() -> None:
    out = Path(sys.argv[1])
    state = PartialState()  # before any Accelerator: it starts the process group
    rank = state.process_index
    result: dict[str, Any] = {
        "process_index": rank, "local_process_index": state.local_process_index,
        "num_processes": state.num_processes, "is_main_process": state.is_main_process,
        "is_last_process": state.is_last_process, "use_distributed": state.use_distributed,
        "distributed_type": str(state.distributed_type), "backend": state.backend, "device": str(state.device),
    }
    result.update(splits(state))
    result.update(operations(rank))
    log(out, rank)

    from plait import Accelerator

    accelerator = Accelerator()
    result.update(
        accelerator_backend=accelerator.backend,
        accelerator_process_index=accelerator.process_index,
        partial_type_after=str(PartialState().distributed_type),
        accelerator_type=str(accelerator.distributed_type),
        state_is_accelerator_s=AcceleratorState() is accelerator.state,
    )
    result.update(local_sgd(accelerator, rank))
    torch.save(result, out / f"rank{rank}.pt")
    accelerator.end_training()


if __name__ == "__main__":
    main()
