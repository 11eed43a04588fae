"""Benchmark: what ``accelerator.log()`` costs, on the main process (TensorBoard) and on the others (nothing).

    python benchmarks/trackers_log.py            # about 2 minutes on 2 cores
    python benchmarks/trackers_log.py --quick    # a short smoke run (about 40 s)

Writes ``benchmarks/results/trackers.json`` (every number) and ``benchmarks/results/trackers.md``
(the tables, also printed). Needs plait, plait-ddp and plait-trackers[tensorboard].

Main process: each contender (``_trackers_worker.py``: TensorBoard's SummaryWriter by
hand, twice, as ``raw`` and the A/A control ``raw_control``; plait's ``log()`` of
floats and of tensors; plait's ``log()`` to a tracker that does nothing; HF
Accelerate's ``log()``) runs in a fresh process of its own, one thread, and logs
10 scalars after each step of a small training loop, each step and each call timed.
The runner asks each process in turn (the order rotated from block to block) for a
block of steps; a block's value is its median call, ratios are paired by block,
medians over blocks and then over sets of fresh processes.

Other processes: two real processes (gloo, torch's elastic agent, through
``plait.testing.run_processes``) each call ``log()`` after every step. Each counts the
calls of the tensorboard tracker's ``log`` and of plait's tracker fan-out
(``plait.tracking.call_each``), and reports whether tensorboard was imported at all.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from _common import CONTROL, HERE, Sandbox, Worker, compare_sets, document, log, median, row, run_suite, table

SCALARS = 10
CONTENDERS = ("raw", CONTROL, "raw_add_scalar", "plait", "plait_tensors", "plait_noop", "accelerate")
COLUMNS = ("raw", CONTROL, "plait", "accelerate")
LABELS = {"raw": "raw SummaryWriter", CONTROL: "raw (A/A)"}
#: sets of fresh processes, blocks per set, steps per block, warm-up steps
PLANS = {"full": {"sets": 3, "blocks": 6, "steps": 300, "warmup": 300, "rank_steps": 3000},
         "quick": {"sets": 1, "blocks": 2, "steps": 100, "warmup": 50, "rank_steps": 300}}
METHOD = [
    "Main process: every contender in a fresh process of its own (forked from a server that imported torch only), "
    "`torch.set_num_threads(1)`, an empty config home; a warm-up, then blocks of steps, each process in turn with "
    "the order rotated from block to block. A block's value is the median of its calls (us), its ratio contender / "
    "raw of the same block; a set's ratio is the median of its blocks', the ratio shown the median over sets.",
    "raw is TensorBoard by hand as plait writes: one event of 10 scalars through the SummaryWriter's file writer; "
    "it runs twice (raw, raw_control), and raw_control / raw, the A/A control, is what noise alone does. Rows are "
    "reported (info): there is no target to judge.",
    "Other processes: 2 processes through `plait.testing.run_processes`; counts of the tracker's `log` and of "
    "`plait.tracking.call_each` (patched there and in every plait module bound to it) during the training loop.",
]


def _stats(samples_ns: Sequence[float]) -> dict[str, float]:
    values = sorted(samples_ns)
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {"median_us": statistics.median(values) / 1000, "mean_us": statistics.fmean(values) / 1000,
            "p90_us": q[8] / 1000, "n": len(values)}


def _set(sandbox: Sandbox, plan: dict[str, int], s: int) -> dict[str, dict[str, list[float]]]:
    """One set of fresh workers: per block, each contender's median log and step time (us), and every call."""
    workers: dict[str, Worker] = {}
    try:
        for c in CONTENDERS:
            directory = sandbox.scratch / f"{c}-{s}"
            workers[c] = Worker("_trackers_worker:main", (c, str(directory), str(plan["warmup"])))
        for worker in workers.values():
            worker.start()
        out: dict[str, dict[str, list[float]]] = {k: {c: [] for c in CONTENDERS} for k in ("log", "step", "calls")}
        for b in range(plan["blocks"]):
            for c in [CONTENDERS[(i + s + b) % len(CONTENDERS)] for i in range(len(CONTENDERS))]:
                got = workers[c].ask(op="run", steps=plan["steps"])
                out["log"][c].append(median(got["log_ns"]) / 1000)
                out["step"][c].append(median(got["step_ns"]) / 1000)
                out["calls"][c] += got["log_ns"]
        return out
    finally:
        for worker in workers.values():
            worker.close()


def main_process(sandbox: Sandbox, plan: dict[str, int]) -> dict[str, Any]:
    sets = []
    for s in range(plan["sets"]):
        log(f"trackers main process: set {s + 1}/{plan['sets']}")
        sets.append(_set(sandbox, plan, s))
    calls = {c: [v for got in sets for v in got["calls"][c]] for c in CONTENDERS}
    return {
        "log": compare_sets([got["log"] for got in sets]),
        "step": compare_sets([got["step"] for got in sets]),
        "calls": {c: _stats(v) for c, v in calls.items()},
    }


def other_processes(sandbox: Sandbox, steps: int) -> list[dict[str, Any]]:
    log("trackers other processes: 2 processes")
    out = sandbox.scratch / "ranks.json"
    command = [sys.executable, str(HERE / "_trackers_worker.py"), "ranks", str(sandbox.scratch / "two"), str(steps),
               str(out)]
    done = subprocess.run(command, env=sandbox.env(threads=1), cwd=HERE, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    ranks: list[dict[str, Any]] = json.loads(out.read_text())
    for rank in ranks:
        for key in ("step_ns", "log_ns", "empty_call_ns"):
            rank[key.replace("_ns", "")] = _stats(rank.pop(key))
    return ranks


def measure(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    plan = PLANS["quick" if quick else "full"]
    main = main_process(sandbox, plan)
    ranks = other_processes(sandbox, plan["rank_steps"])
    logged, step, calls = main["log"], main["step"], main["calls"]
    value, ratio = logged["value"], logged["ratio"]

    def values(plait: str) -> dict[str, float | None]:
        return {"raw": value["raw"], CONTROL: value[CONTROL], "plait": value[plait], "accelerate": value["accelerate"]}

    def note(c: str) -> str:
        return f"mean {calls[c]['mean_us']:.1f} us, p90 {calls[c]['p90_us']:.1f} us over {calls[c]['n']} calls"

    per_step = step["value"]["raw"]
    rows = [
        row("main process", "training step (forward, backward, SGD step, zero_grad), MLP 64-256-256-1, batch 32",
            "us", {c: step["value"][c] for c in COLUMNS}, {c: step["ratio"][c] for c in COLUMNS[1:]}, "-", "info",
            "raw: the model and optimizer as they are; plait, accelerate: prepared", columns=COLUMNS),
        row("main process", f"`log()` of {SCALARS} Python floats -> TensorBoard", "us", values("plait"),
            {c: ratio[c] for c in (CONTROL, "plait", "accelerate")}, "-", "info",
            f"plait: {note('plait')}, {value['plait'] / per_step:.1%} of raw's step; HF Accelerate's tracker flushes "
            f"each call; one `add_scalar` per value by hand (one event each): {value['raw_add_scalar']:.1f} us "
            f"({ratio['raw_add_scalar']:.3f}x raw)", columns=COLUMNS),
        row("main process", f"`log()` of {SCALARS} 0-d tensors -> TensorBoard", "us",
            {**values("plait_tensors"), "accelerate": None}, {CONTROL: ratio[CONTROL], "plait": ratio["plait_tensors"]},
            "-", "info", f"plait: {note('plait_tensors')}; raw: the same values as floats", columns=COLUMNS),
        row("main process", "`log()` to a tracker that does nothing (plait's dispatch alone)", "us",
            {"plait": value["plait_noop"]}, None, "-", "info", note("plait_noop"), columns=COLUMNS),
    ]
    return {
        "settings": {**plan, "scalars": SCALARS, "threads": 1},
        "results": {"main_process": main, "other_processes": ranks},
        "rows": rows,
    }


def page(results: dict[str, Any]) -> str:
    body = table(results["rows"], COLUMNS, LABELS, verdict="status")
    ranks = results["results"]["other_processes"]
    extra = [
        f"## Other processes: no tracker work at all\n\nTwo processes (gloo), `Accelerator(log_with=\"tensorboard\")`, "
        f"`log()` of {SCALARS} floats after each of {ranks[1]['log']['n']} steps on both.", "",
        "| rank | `log()` after each step, median ns | empty call in the same slot, median ns | "
        "`log()` back to back, mean ns | tracker `log` calls | fan-out calls | tracker implementations | "
        "tensorboard imported |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for rank in ranks:
        extra.append(
            f"| {rank['rank']} | {rank['log']['median_us'] * 1000:.0f} | {rank['empty_call']['median_us'] * 1000:.0f} "
            f"| {rank['log_warm_mean_ns']:.0f} | {rank['calls']['TensorBoardTracker.log']} | "
            f"{rank['calls']['call_each(plait_tracker_log)']} | {rank['tracker_implementations']} | "
            f"{'yes' if rank['tensorboard_imported'] else 'no'} |")
    extra += [
        "",
        "On rank 1 the tracker plugin is never loaded (no implementation of the tracker hooks is registered), "
        "`log()` returns before plait's fan-out, and tensorboard is not even imported: what is left is `log()`'s "
        "checks. The empty call is the same timed slot with a function that does nothing; right after a training "
        "step the caches are cold, so the first call after a step costs more than back-to-back calls.",
    ]
    return document("plait-trackers: the cost of `accelerator.log()`", "python benchmarks/trackers_log.py", results,
                    body, METHOD, extra)


def main(argv: list[str] | None = None) -> int:
    return run_suite(argv, name="trackers", doc=__doc__ or "", measure=measure, page=page,
                     versions=("tensorboard", "plait-trackers"))


if __name__ == "__main__":
    sys.exit(main())
