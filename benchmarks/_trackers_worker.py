"""Workers of ``trackers_log.py``: one contender's training step and log call, timed step by step.

``main(channel, contender, project_dir, warmup)`` runs in a fresh process (``_workers.Worker``)
and answers ``run(steps)`` with the ns of each training step and of each log call:

- ``raw`` (and ``raw_control``, the same again): 10 scalars written to a
  ``SummaryWriter`` by hand as plait writes them, one event (no plait imported);
- ``raw_add_scalar``: the same values, one ``add_scalar`` (one event) each, as HF Accelerate's tracker does;
- ``plait``: ``accelerator.log()`` of 10 Python floats to TensorBoard; ``plait_tensors``: of 10 0-d tensors;
- ``plait_noop``: ``accelerator.log()`` to a ``plait.tracking.GeneralTracker`` that does nothing (plait's dispatch);
- ``accelerate``: HF Accelerate's ``log()`` to its TensorBoard tracker.

The training step (an MLP 64-256-256-1 at batch 32: forward, MSE, backward, SGD step,
zero_grad; through a prepared model and optimizer for plait and Accelerate) is timed
apart from the log call that follows it. ``python _trackers_worker.py ranks DIR STEPS OUT``
runs :func:`rank_worker` on two real processes (``plait.testing.run_processes``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from _workers import Channel, serve

SCALARS = 10
Log = Callable[[int, dict[str, Any]], None]


def _problem(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)
    )
    return model, torch.optim.SGD(model.parameters(), lr=0.01), torch.randn(32, 64), torch.randn(32, 1)


def values_for(step: int, loss: torch.Tensor | None, tensors: bool) -> dict[str, Any]:
    """10 scalars: the loss and 9 others, as Python floats or as 0-d tensors."""
    if tensors:
        assert loss is not None
        return {"loss": loss.detach(), **{f"metric_{i}": loss.detach() * i for i in range(1, SCALARS)}}
    value = float(step % 7)
    return {"loss": value, **{f"metric_{i}": value * i for i in range(1, SCALARS)}}


def trainer(accelerator: Any, tensors: bool, log: Log) -> Callable[[int], tuple[list[int], list[int]]]:
    """``run(steps)``: that many training steps, each followed by ``log(step, values)``; the ns of each step
    and of each log (the values are made between the two, outside both timings)."""
    model, optimizer, x, y = _problem()
    backward: Callable[[torch.Tensor], Any] = torch.Tensor.backward
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
        backward = accelerator.backward
    clock = time.perf_counter_ns
    counter = [0]

    def run(steps: int) -> tuple[list[int], list[int]]:
        step_ns, log_ns = [], []
        for _ in range(steps):
            step = counter[0]
            counter[0] += 1
            t0 = clock()
            loss = torch.nn.functional.mse_loss(model(x), y)
            backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            t1 = clock()
            values = values_for(step, loss, tensors)
            t2 = clock()
            log(step, values)
            t3 = clock()
            step_ns.append(t1 - t0)
            log_ns.append(t3 - t2)
        return step_ns, log_ns

    return run


def _summary_writer(directory: str, one_event: bool) -> tuple[Log, Callable[[], None]]:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    writer: Any = SummaryWriter(directory)

    def event(step: int, values: dict[str, Any]) -> None:
        summary = Summary(value=[Summary.Value(tag=key, simple_value=value) for key, value in values.items()])
        writer.file_writer.add_summary(summary, step)

    def add_scalar_each(step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            writer.add_scalar(key, value, global_step=step)

    return (event if one_event else add_scalar_each), writer.close


def _noop_tracker() -> Any:
    from plait.tracking import GeneralTracker

    class NoopTracker(GeneralTracker):
        """A tracker that does nothing: what is left is plait's dispatch."""

        name = "noop"
        requires_logging_directory = False

        def store_init_configuration(self, values: Mapping[str, Any]) -> None:
            pass

        def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
            pass

    return NoopTracker()


def main(channel: Channel, contender: str, project_dir: str, warmup_text: str) -> None:
    torch.set_num_threads(1)
    accelerator: Any = None
    finish: Callable[[], None] = lambda: None  # noqa: E731
    if contender in ("raw", "raw_control", "raw_add_scalar"):
        log, finish = _summary_writer(project_dir, contender != "raw_add_scalar")
    elif contender == "accelerate":
        import accelerate

        accelerator = accelerate.Accelerator(log_with="tensorboard", project_dir=project_dir)
        accelerator.init_trackers("bench")
        log, finish = (lambda step, values: accelerator.log(values, step=step)), accelerator.end_training
    elif contender.startswith("plait"):
        from plait import Accelerator

        if contender == "plait_noop":
            accelerator = Accelerator(log_with=[_noop_tracker()])
        else:
            accelerator = Accelerator(log_with="tensorboard", project_dir=project_dir)
        accelerator.init_trackers("bench", config={"scalars": SCALARS})
        log, finish = (lambda step, values: accelerator.log(values, step=step)), accelerator.end_training
    else:
        raise ValueError(f"unknown contender {contender!r}")
    run = trainer(accelerator, contender == "plait_tensors", log)
    run(int(warmup_text))

    def timed(steps: int) -> dict[str, Any]:
        step_ns, log_ns = run(steps)
        return {"step_ns": step_ns, "log_ns": log_ns}

    try:
        serve(channel, {"run": timed}, {"ready": True})
    finally:
        finish()


# ---------------------------------------------------------------------------- other processes
def _patch_call_each(counts: dict[str, int]) -> None:
    """Count plait's tracker fan-out: ``plait.tracking.call_each`` replaced, in that module and in every plait
    module that imported the function by name (so whichever module plait calls it from, the count holds)."""
    import plait.accelerator
    import plait.tracking

    original = plait.tracking.call_each

    def counting_call_each(pm: Any, hook_name: str, *args: Any, **kwargs: Any) -> None:
        if hook_name == "plait_tracker_log":
            counts["call_each(plait_tracker_log)"] += 1
        original(pm, hook_name, *args, **kwargs)

    for name, module in list(sys.modules.items()):
        if name.startswith("plait") and module is not None and getattr(module, "call_each", None) is original:
            module.call_each = counting_call_each  # type: ignore[attr-defined]


def rank_worker(project_dir: str, steps: int) -> dict[str, Any]:
    """One rank of a 2-process run: train, log every step, count the tracker work done here."""
    from plait import Accelerator

    torch.set_num_threads(1)
    counts = {"TensorBoardTracker.log": 0, "call_each(plait_tracker_log)": 0}
    from plait_trackers.tensorboard import TensorBoardTracker

    tracker_log = TensorBoardTracker.log

    def counting_log(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["TensorBoardTracker.log"] += 1
        tracker_log(self, *args, **kwargs)

    TensorBoardTracker.log = counting_log  # type: ignore[method-assign]
    _patch_call_each(counts)
    accelerator = Accelerator(log_with="tensorboard", project_dir=project_dir)
    accelerator.init_trackers("bench")
    step_ns, log_ns = trainer(accelerator, False, lambda step, values: accelerator.log(values, step=step))(steps)
    _, floor_ns = trainer(accelerator, False, lambda step, values: None)(steps)
    calls = dict(counts)
    accelerator.wait_for_everyone()
    # Warm: back-to-back calls, nothing in between (right after a training step, caches are cold).
    values = values_for(0, None, False)
    clock = time.perf_counter_ns
    start = clock()
    for step in range(steps):
        accelerator.log(values, step=step)
    warm_ns = (clock() - start) / steps
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "rank": accelerator.process_index, "step_ns": step_ns, "log_ns": log_ns, "empty_call_ns": floor_ns,
        "log_warm_mean_ns": warm_ns, "calls": calls,
        "tracker_implementations": len(accelerator.plugin_manager.hook.plait_tracker_log.get_hookimpls()),
        "tensorboard_imported": "torch.utils.tensorboard" in sys.modules,
    }


def ranks(project_dir: str, steps: int, out: str) -> None:
    """Run :func:`rank_worker` on 2 processes; write their results (rank order) to ``out`` as JSON."""
    import json

    from plait.testing import run_processes

    with open(out, "w") as f:
        json.dump(run_processes(rank_worker, 2, args=(project_dir, steps)), f)


if __name__ == "__main__":  # python _trackers_worker.py ranks PROJECT_DIR STEPS OUT (a fresh process)
    if sys.argv[1] != "ranks":
        raise SystemExit(f"unknown command {sys.argv[1]!r}: expected ranks")
    ranks(sys.argv[2], int(sys.argv[3]), sys.argv[4])
