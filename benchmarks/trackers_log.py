"""Benchmark: what ``accelerator.log()`` costs, on the main process (TensorBoard) and on the others (nothing).

    python benchmarks/trackers_log.py            # about a minute on 2 cores
    python benchmarks/trackers_log.py --quick    # a few seconds, smaller samples

Writes ``benchmarks/results/trackers.json`` (every number and raw sample) and
``benchmarks/results/trackers.md`` (the table, also printed). Needs plait,
plait-ddp and plait-trackers[tensorboard].

Main process, one process, ``torch.set_num_threads(1)``: a small training step
(an MLP 64-256-256-1 at batch 32, forward, MSE, backward, SGD step, zero_grad,
through a prepared model and optimizer) is timed, then ``accelerator.log()`` of
10 scalars right after it, step by step, with ``time.perf_counter_ns`` around
each. Reported: the median of each and the ratio of the medians; the mean too,
since TensorBoard's writer thread makes a few calls slow. The same 10 values
written to a ``SummaryWriter`` directly, and ``log()`` through a tracker plugin
that does nothing, split the cost into TensorBoard's and plait's; HF
Accelerate's own tracker is measured too when accelerate is installed. All
trackers write to a temporary directory, deleted afterwards.

Other processes: two real processes (gloo, torch's elastic agent, through
``plait.testing.run_processes``) each call ``log()`` after every step. Each
counts the calls of the tensorboard tracker's ``log`` and of plait's tracker
fan-out (``call_each``), and reports whether tensorboard was imported at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from plait import hookimpl

HERE = Path(__file__).resolve().parent
SCALARS = 10


# ---------------------------------------------------------------------------- helpers
def _stats(samples_ns: Sequence[int]) -> dict[str, float]:
    values = sorted(samples_ns)
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {
        "median_us": statistics.median(values) / 1000,
        "mean_us": statistics.fmean(values) / 1000,
        "p90_us": q[8] / 1000,
        "n": len(values),
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _machine() -> dict[str, Any]:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {
        "usable_cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        **{name: _version(name) for name in ("torch", "plait", "plait-ddp", "plait-trackers", "tensorboard")},
    }


def _problem(seed: int = 0) -> tuple[Any, Any, Any, Any]:
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(32, 64)
    y = torch.randn(32, 1)
    return model, optimizer, x, y


def _values(step: int, loss: Any, tensors: bool) -> dict[str, Any]:
    """10 scalars: the loss and 9 others, as Python floats or as 0-d tensors."""
    if tensors:
        assert loss is not None
        return {"loss": loss.detach(), **{f"metric_{i}": loss.detach() * i for i in range(1, SCALARS)}}
    value = float(step % 7)
    return {"loss": value, **{f"metric_{i}": value * i for i in range(1, SCALARS)}}


def _train_and_log(
    accelerator: Any, steps: int, tensors: bool, log: Callable[[int, dict[str, Any]], None]
) -> tuple[list[int], list[int]]:
    """``steps`` training steps, each followed by ``log(step, values)``; the ns of each step and of each log
    (the values are made between the two, outside both timings)."""
    import torch

    model, optimizer, x, y = _problem()
    model, optimizer = accelerator.prepare(model, optimizer)
    step_ns, log_ns = [], []
    clock = time.perf_counter_ns
    for step in range(steps):
        t0 = clock()
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        t1 = clock()
        values = _values(step, loss, tensors)
        t2 = clock()
        log(step, values)
        t3 = clock()
        step_ns.append(t1 - t0)
        log_ns.append(t3 - t2)
    return step_ns, log_ns


class _NoopTracker:
    """A tracker plugin that does nothing: what is left is plait's dispatch."""

    @hookimpl
    def plait_tracker_log(self, values: Any, step: Any) -> None:
        pass


# ---------------------------------------------------------------------------- main process
def main_process(steps: int, scratch: Path) -> dict[str, Any]:
    import torch

    from plait import Accelerator

    torch.set_num_threads(1)
    results: dict[str, Any] = {}

    for label, tensors in (("floats", False), ("tensors", True)):
        accelerator = Accelerator(log_with="tensorboard", project_dir=scratch / f"main-{label}")
        accelerator.init_trackers("bench", config={"scalars": SCALARS})
        def log(step: int, values: dict[str, Any]) -> None:
            accelerator.log(values, step=step)  # noqa: B023 (called before the loop moves on)

        _train_and_log(accelerator, steps // 10, tensors, log)  # warm-up
        step_ns, log_ns = _train_and_log(accelerator, steps, tensors, log)
        accelerator.end_training()
        results[f"tensorboard_{label}"] = {"step": _stats(step_ns), "log": _stats(log_ns),
                                           "samples_ns": {"step": step_ns, "log": log_ns}}

    # TensorBoard alone: the same values straight into a SummaryWriter, as plait writes them (one event)
    # and as HF Accelerate's tracker does (one add_scalar, so one event, per value).
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(scratch / "raw"))
    accelerator = Accelerator()

    def one_event(step: int, values: dict[str, Any]) -> None:
        summary = Summary(value=[Summary.Value(tag=key, simple_value=value) for key, value in values.items()])
        writer.file_writer.add_summary(summary, step)  # type: ignore[union-attr]

    def add_scalar_each(step: int, values: dict[str, Any]) -> None:
        for key, value in values.items():
            writer.add_scalar(key, value, global_step=step)

    for label, write in (("summary_writer_one_event", one_event), ("summary_writer_add_scalar", add_scalar_each)):
        step_ns, log_ns = _train_and_log(accelerator, steps, False, write)
        results[label] = {"step": _stats(step_ns), "log": _stats(log_ns)}
    writer.close()

    # HF Accelerate's own TensorBoard tracker, for reference (it also flushes the file at every log()).
    try:
        import accelerate
    except ImportError:
        results["hf_accelerate"] = None
    else:
        hf = accelerate.Accelerator(log_with="tensorboard", project_dir=str(scratch / "hf"))
        hf.init_trackers("bench")
        step_ns, log_ns = _train_and_log(hf, steps, False, lambda step, values: hf.log(values, step=step))
        hf.end_training()
        results["hf_accelerate"] = {"step": _stats(step_ns), "log": _stats(log_ns), "version": accelerate.__version__}

    # plait alone: log() through a tracker plugin that does nothing.
    accelerator = Accelerator(plugins=[_NoopTracker()])
    accelerator.init_trackers("bench")
    step_ns, log_ns = _train_and_log(accelerator, steps, False, lambda step, values: accelerator.log(values, step=step))
    results["noop_plugin"] = {"step": _stats(step_ns), "log": _stats(log_ns)}
    return results


# ---------------------------------------------------------------------------- other processes
def _rank_worker(project_dir: str, steps: int) -> dict[str, Any]:
    """One rank of a 2-process run: train, log every step, count the tracker work done here."""
    import torch

    import plait._trackers
    from plait import Accelerator

    torch.set_num_threads(1)
    # The tracker under measurement: its log() is counted on both ranks.
    from plait_trackers.tensorboard import TensorBoardTracker
    counts = {"TensorBoardTracker.log": 0, "call_each(plait_tracker_log)": 0}
    tracker_log = TensorBoardTracker.log
    call_each = plait._trackers.call_each

    def counting_log(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["TensorBoardTracker.log"] += 1
        tracker_log(self, *args, **kwargs)

    def counting_call_each(pm: Any, hook_name: str, *args: Any, **kwargs: Any) -> None:
        if hook_name == "plait_tracker_log":
            counts["call_each(plait_tracker_log)"] += 1
        call_each(pm, hook_name, *args, **kwargs)

    TensorBoardTracker.log = counting_log  # type: ignore[method-assign]
    plait._trackers.call_each = counting_call_each  # type: ignore[assignment]

    accelerator = Accelerator(log_with="tensorboard", project_dir=project_dir)
    accelerator.init_trackers("bench")
    step_ns, log_ns = _train_and_log(accelerator, steps, False, lambda step, values: accelerator.log(values, step=step))
    _, floor_ns = _train_and_log(accelerator, steps, False, lambda step, values: None)
    calls = dict(counts)
    accelerator.wait_for_everyone()
    # Warm: back-to-back calls, nothing in between (right after a training step, caches are cold).
    values = _values(0, None, False)
    clock = time.perf_counter_ns
    start = clock()
    for step in range(steps):
        accelerator.log(values, step=step)
    warm_ns = (clock() - start) / steps
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "rank": accelerator.process_index,
        "step": _stats(step_ns),
        "log": _stats(log_ns),
        "empty_call": _stats(floor_ns),
        "log_warm_mean_ns": warm_ns,
        "calls": calls,
        "tracker_implementations": len(accelerator.plugin_manager.hook.plait_tracker_log.get_hookimpls()),
        "tensorboard_imported": "torch.utils.tensorboard" in sys.modules,
    }


def other_processes(steps: int, scratch: Path) -> list[dict[str, Any]]:
    from plait.testing import run_processes

    return run_processes(_rank_worker, 2, args=(str(scratch / "two"), steps))


# ---------------------------------------------------------------------------- report
def report(results: dict[str, Any]) -> str:
    main = results["main_process"]
    floats, tensors = main["tensorboard_floats"], main["tensorboard_tensors"]
    one_event, add_scalar = main["summary_writer_one_event"], main["summary_writer_add_scalar"]
    noop, hf = main["noop_plugin"], main["hf_accelerate"]
    rank0, rank1 = results["other_processes"]
    step = floats["step"]["median_us"]

    def row(what: str, stats: dict[str, float], relative: bool = True) -> str:
        ratio = f"{stats['median_us'] / step:.1%}" if relative else "-"
        return f"| {what} | {stats['median_us']:.1f} | {stats['mean_us']:.1f} | {stats['p90_us']:.1f} | {ratio} |"

    machine = results["machine"]
    lines = [
        "# plait-trackers: the cost of `accelerator.log()`",
        "",
        f"Generated {results['generated']} by `python benchmarks/trackers_log.py`"
        f"{' --quick' if results['quick'] else ''}.",
        "",
        f"Machine: {machine['usable_cores']} usable cores; Python {machine['python']}, torch {machine['torch']}, "
        f"tensorboard {machine['tensorboard']}, plait {machine['plait']}; {machine['platform']}.",
        "",
        f"## Main process: `log()` of {SCALARS} scalars per step, TensorBoard",
        "",
        f"Training step: MLP 64-256-256-1, batch 32, 1 thread; {floats['step']['n']} steps, each followed by one "
        "`log()`. Times in microseconds; the last column is each median divided by the training step's.",
        "",
        "| measurement | median us | mean us | p90 us | / training step |",
        "| --- | ---: | ---: | ---: | ---: |",
        row("training step (forward, backward, SGD step, zero_grad)", floats["step"], relative=False),
        row(f"`accelerator.log()`, {SCALARS} Python floats -> TensorBoard", floats["log"]),
        row(f"`accelerator.log()`, {SCALARS} 0-d tensors -> TensorBoard", tensors["log"]),
        row(f"TensorBoard alone, as plait writes: one event of {SCALARS} scalars", one_event["log"]),
        row(f"TensorBoard alone, one `add_scalar` per value (one event each) x {SCALARS}", add_scalar["log"]),
        row("plait's dispatch alone: `accelerator.log()` to a tracker plugin that does nothing", noop["log"]),
        *(
            [row(f"HF Accelerate {hf['version']}: `accelerator.log()` -> its TensorBoardTracker (flushes each call)",
                 hf["log"])]
            if hf
            else []
        ),
        "",
        f"Logging {SCALARS} scalars at every step costs {floats['log']['median_us'] / step:.1%} of this small step "
        f"({floats['log']['median_us'] / 10 / step:.1%} when logging every 10 steps). Of the "
        f"{floats['log']['median_us']:.0f} us, TensorBoard itself takes {one_event['log']['median_us']:.0f} us; "
        f"plait's dispatch and value checks take the rest. All scalars of one `log()` go into one event: one "
        f"hand-off to TensorBoard's writer thread instead of {SCALARS}. Events are written by that thread and "
        "flushed at `end_training` (and every `flush_secs`), not at each `log()`.",
        "",
        "## Other processes: no tracker work at all",
        "",
        f"Two processes (gloo), `Accelerator(log_with=\"tensorboard\")`, `log()` of {SCALARS} floats after each of "
        f"{rank1['log']['n']} steps on both.",
        "",
        "| rank | `log()` after each step, median ns | empty call in the same slot, median ns | "
        "`log()` back to back, mean ns | tracker `log` calls | fan-out calls | tracker implementations | "
        "tensorboard imported |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for rank in (rank0, rank1):
        lines.append(
            f"| {rank['rank']} | {rank['log']['median_us'] * 1000:.0f} | {rank['empty_call']['median_us'] * 1000:.0f} | "
            f"{rank['log_warm_mean_ns']:.0f} | "
            f"{rank['calls']['TensorBoardTracker.log']} | {rank['calls']['call_each(plait_tracker_log)']} | "
            f"{rank['tracker_implementations']} | {'yes' if rank['tensorboard_imported'] else 'no'} |"
        )
    lines += [
        "",
        "On rank 1 the tracker plugin is never loaded (no implementation of the tracker hooks is registered), "
        "`log()` returns before plait's fan-out, and tensorboard is not even imported: what is left is "
        "`log()`'s two checks (trackers started, main process). The empty call is the same timed slot with a "
        "function that does nothing (the timer and the call); right after a training step the caches are cold, "
        "so the first call after a step costs more than back-to-back calls. The tracker and fan-out counts are "
        "those of the training loop.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small samples: a smoke run of a few seconds")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    steps = 300 if args.quick else 3000

    scratch = Path(tempfile.mkdtemp(prefix="plait-trackers-bench-"))
    os.environ["XDG_CONFIG_HOME"] = str(scratch / "config")  # no user config file changes what is measured
    for name in [name for name in os.environ if name.startswith("PLAIT_")]:
        del os.environ[name]
    try:
        results: dict[str, Any] = {
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "quick": args.quick,
            "machine": _machine(),
            "main_process": main_process(steps, scratch),
            "other_processes": other_processes(steps, scratch),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    table = report(results)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "trackers.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.results_dir / "trackers.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
