"""Workers of test_hangs.py: 2 real processes (gloo) whose collectives time out or would hang.

Each worker builds an Accelerator whose process-group timeout is :data:`TIMEOUT` seconds
(HF Accelerate's ``InitProcessGroupKwargs``), makes one rank stall or go elsewhere, and returns
what the other rank's error said (its text, the named ranks, how long it took) as plain data.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

#: The process-group timeout of these workers, in seconds; the wait for the other ranks' reports is as long.
TIMEOUT = 2
#: How long a stalled rank sleeps: past the other's timeout and its wait for reports.
STALL = 2 * TIMEOUT + 0.5


def _accelerator(**kwargs: Any) -> Any:
    from plait import Accelerator, InitProcessGroupKwargs

    return Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=TIMEOUT))], **kwargs)


def _failure(function: Any) -> dict[str, Any]:
    """What ``function()`` raised, as plain data (exceptions may not pickle back to the test)."""
    start = time.monotonic()
    try:
        function()
    except Exception as error:
        cause = error.__cause__
        return {
            "type": type(error).__name__, "message": str(error), "is_runtime_error": isinstance(error, RuntimeError),
            "seconds": time.monotonic() - start, "cause": "" if cause is None else str(cause),
            "missing": getattr(error, "missing", None), "waiting": getattr(error, "waiting", None),
            "operation": getattr(error, "operation", None),
        }
    return {"type": None, "seconds": time.monotonic() - start}


def barrier_worker() -> dict[str, Any]:
    """Rank 1 skips a wait_for_everyone and sleeps: rank 0's barrier times out."""
    accelerator = _accelerator()
    accelerator.wait_for_everyone()  # both arrive: plait's collective #1
    if accelerator.process_index == 1:
        time.sleep(STALL)
        return {"slept": STALL}
    return _failure(accelerator.wait_for_everyone)


def mixed_worker() -> dict[str, Any]:
    """Rank 0 broadcasts while rank 1 gathers: both time out, each in its own collective."""
    accelerator = _accelerator()
    accelerator.wait_for_everyone()
    tensor = torch.arange(3.0)
    if accelerator.process_index == 0:
        return _failure(lambda: accelerator.broadcast(tensor))
    return _failure(lambda: accelerator.gather(tensor))


def ddp_worker() -> dict[str, Any]:
    """DDP training: rank 1 stops before the backward of step 3; rank 0's gradient all-reduce times out."""
    accelerator = _accelerator()
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = TensorDataset(torch.randn(32, 4, generator=torch.Generator().manual_seed(1)), torch.zeros(32, 1))
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=2))
    out: dict[str, Any] = {"ddp": type(model).__name__}
    for step, (x, y) in enumerate(loader, start=1):
        loss = nn.functional.mse_loss(model(x), y)
        if step == 3:
            if accelerator.process_index == 1:
                time.sleep(STALL)
                return out
            out.update(_failure(lambda: accelerator.backward(loss)))  # noqa: B023 (called at once)
            return out
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        # Two synchronised steps: the weights are the same on both ranks before the stall.
        out[f"weight_{step}"] = accelerator.unwrap_model(model).weight.detach().clone()
    return out


def _uneven_training(accelerator: Any, loader: Any) -> dict[str, Any]:
    """Train over ``loader``, then wait_for_everyone; the error (if any) and the batches trained."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    trained = []

    def train() -> None:
        for x, y in loader:
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            trained.append(len(x))
        accelerator.wait_for_everyone()

    out = _failure(train)
    out["trained"] = trained
    return out


def debug_worker() -> dict[str, Any]:
    """PLAIT_DEBUG=1 (set by the test): uneven batches are an error on both ranks instead of a hang."""
    from plait import Accelerator

    out: dict[str, Any] = {}
    # 18 samples in batches of 2 on 2 ranks, even_batches=False: rank 0 gets 5 batches, rank 1 gets 4.
    data = TensorDataset(torch.randn(18, 4, generator=torch.Generator().manual_seed(1)), torch.zeros(18, 1))
    accelerator = _accelerator(even_batches=False)
    r = accelerator.process_index
    out["prepared"] = _uneven_training(accelerator, accelerator.prepare(DataLoader(data, batch_size=2)))
    # The group is still usable: both ranks raised after the same all_gather_object.
    out["after"] = accelerator.gather(torch.tensor([r])).tolist()

    # A loader of the user's own, never prepared: rank 0 has 3 batches, rank 1 has 2.
    accelerator = _accelerator()
    own = DataLoader(TensorDataset(torch.randn(6 - 2 * r, 4), torch.zeros(6 - 2 * r, 1)), batch_size=2)
    out["own"] = _uneven_training(accelerator, own)

    # Inside join_uneven_inputs uneven batches are legitimate: no error, and the ranks end with equal weights.
    accelerator = Accelerator(even_batches=False)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=2))
    joined = []
    with accelerator.join_uneven_inputs([model]):
        for x, y in loader:
            accelerator.backward(nn.functional.mse_loss(model(x), y))
            optimizer.step()
            optimizer.zero_grad()
            joined.append(len(x))
    accelerator.wait_for_everyone()
    out["joined"] = joined
    out["joined_weight"] = accelerator.unwrap_model(model).weight.detach().clone()
    out["joined_uneven_flag_after"] = accelerator.collectives.uneven_inputs
    return out
