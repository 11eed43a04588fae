"""The core suite's first benchmark, ``step_overhead``: time per step of a prepared training loop over raw PyTorch.

Registered in ``suite_core.BENCHMARKS`` and run by ``run.py``; see :func:`step_overhead`.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

from _common import CONTENDERS, HERE, Sandbox, Worker, judge, log, median, rotated, row

STEP_TARGETS = {
    "tiny": 1.05,
    "mlp": 1.01,
}

# ============================================================================ 1. per-step overhead
STEP_CONFIGS = (
    # (model, accumulation, epochs per timed block, warm-up epochs, (sets, blocks per set), quick (sets, blocks))
    ("tiny", 1, 2, 3, (8, 8), (2, 3)),
    ("tiny", 4, 2, 3, (8, 8), (2, 3)),
    ("mlp", 1, 1, 2, (12, 3), (2, 2)),
    ("mlp", 4, 1, 2, (12, 3), (2, 2)),
)
MODEL_LABEL = {
    "tiny": "tiny Linear(32,1), batch 8",
    "mlp": "MLP 3x(Linear 512->512, ReLU), batch 64",
}
#: Each set of fresh processes runs raw PyTorch twice: the second ("raw_control") is timed
#: like a contender, and its ratio over raw shows what noise alone does (an A/A test).
STEP_RUNNERS = ("raw", "plait", "accelerate", "raw_control")


def _step_set(model: str, accumulation: int, epochs: int, warmup: int, blocks: int,
              first: int) -> tuple[int, dict[str, list[float]]]:
    """One set of fresh workers: per-step wall time (us) of each runner in each block."""
    workers = {}
    try:
        for runner in STEP_RUNNERS:
            contender = "raw" if runner == "raw_control" else runner
            workers[runner] = Worker("_step_worker:main", (contender, model, str(accumulation), str(warmup)))
        steps_per_epoch = 0
        for worker in workers.values():
            steps_per_epoch = worker.start()["steps_per_epoch"]
        samples: dict[str, list[float]] = {r: [] for r in STEP_RUNNERS}
        for b in range(blocks):
            for runner in rotated(STEP_RUNNERS, first + b):
                answer = workers[runner].ask(op="run", epochs=epochs)
                samples[runner].append(answer["wall"] / answer["steps"] * 1e6)
        return steps_per_epoch, samples
    finally:
        for worker in workers.values():
            worker.close()


PAIRED_PLAN = (6, 12)  # processes, epochs of 50 interleaved steps of each loop per process
PAIRED_QUICK = (1, 3)


def _paired_mlp(quick: bool) -> dict[int, dict[str, Any]]:
    """The MLP's loops compared inside one process, each on its own identical copy of the model and data.

    Between separate processes the MLP's step time varies by several percent (memory
    layout), and within one process by several percent from one block of steps to the
    next (other tenants of the machine), more than the 1% target. Here plait's loop and
    two raw ones take turns step by step in a drawn order (``_step_worker.interleaved``),
    so the loops of one step share the machine's state. A step's ratio is plait's time
    over the mean of the two raw copies'; the control, the second raw copy's over the
    first's, shows what the set-up itself leaves (layout of the copies, which are built
    in an order rotating over processes). Ratios are medians over every step, pooled
    over processes (some 3,600 steps).
    """
    processes, epochs = PAIRED_QUICK if quick else PAIRED_PLAN
    results: dict[int, dict[str, Any]] = {}
    for accumulation in (1, 4):
        ratios: list[float] = []
        controls: list[float] = []
        per_process: list[float] = []
        times: dict[str, list[float]] = {"raw": [], "raw_control": [], "plait": []}
        for p in range(processes):
            log(f"step_overhead mlp accumulation={accumulation} interleaved in one process: {p + 1}/{processes}")
            worker = Worker("_step_worker:main",
                            ("paired", "mlp", str(accumulation), "1" if quick else "2", str(p)))
            try:
                worker.start()
                got = worker.ask(op="interleave", epochs=epochs)
            finally:
                worker.close()
            mine = [x / ((r + c) / 2) for x, r, c in zip(got["plait"], got["raw"], got["raw_control"])]
            ratios += mine
            controls += [c / r for r, c in zip(got["raw"], got["raw_control"])]
            per_process.append(median(mine))
            for loop in times:
                times[loop] += got[loop]
        base = [(r + c) / 2 for r, c in zip(times["raw"], times["raw_control"])]
        results[accumulation] = {
            "ratio": median(ratios),
            "control": median(controls),
            "steps": len(ratios),
            "ratio_per_set": [round(r, 4) for r in per_process],
            "overhead_us": median(x - b for x, b in zip(times["plait"], base)),
            "per_step_us": {loop: median(v) for loop, v in times.items()},
        }
    return results


#: (model, accumulation) loops whose instructions are counted under callgrind, and epochs counted.
INSTRUCTION_CONFIGS = (("tiny", 1), ("tiny", 4))
INSTRUCTION_EPOCHS = 4


def _instruction_counts(sandbox: Sandbox) -> dict[tuple[str, int], dict[str, float]] | None:
    """Instructions per step of each contender's loop, counted by valgrind's callgrind.

    Timing on a shared 2-core VM is noisy by a few percent; an instruction count is
    not (the same code gives the same count to a few parts in 10^4), so it shows what
    plait adds per step without the noise, though not what cache misses add to it.
    Two valgrind processes at a time (~2-3 minutes each, most of it ``import torch``).
    ``None`` where valgrind is not installed.
    """
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        log("step_overhead instructions: valgrind is not installed, skipped")
        return None
    jobs = [(c, model, k) for model, k in INSTRUCTION_CONFIGS for c in CONTENDERS]
    counts: dict[tuple[str, int], dict[str, float]] = {}
    for start in range(0, len(jobs), 2):
        running = []
        for contender, model, k in jobs[start:start + 2]:
            log(f"step_overhead instructions under callgrind: {contender} {model} accumulation={k}")
            prefix = sandbox.scratch / f"callgrind-{contender}-{model}-{k}"
            command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p", sys.executable,
                       str(HERE / "_instructions.py"), contender, model, str(k), str(INSTRUCTION_EPOCHS)]
            env = sandbox.env(threads=1, extra={"PYTHONHASHSEED": "0"})
            process = subprocess.Popen(command, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
            running.append((contender, model, k, prefix, process))
        for contender, model, k, prefix, process in running:
            out, err = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"callgrind run of {contender} {model} failed:\n{err[-3000:]}")
            steps = int(next(line.split()[1] for line in out.splitlines() if line.startswith("@@steps")))
            dumps = [f for f in prefix.parent.glob(prefix.name + ".*.1")]
            summary = next(line for line in dumps[0].read_text().splitlines() if line.startswith("summary:"))
            counts.setdefault((model, k), {})[contender] = int(summary.split()[1]) / steps
            for f in prefix.parent.glob(prefix.name + ".*"):
                f.unlink()
    return counts


def step_overhead(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    """Per configuration, several sets of fresh worker processes; timed blocks interleaved between them.

    In each set the runner asks each worker in turn (rotating who goes first) to run a
    block of epochs, so that the contenders are timed within the same second and slow
    drifts of the machine hit all of them alike; each block gives a paired ratio
    (contender / raw of the same block). A set's ratio is the median of its blocks';
    the reported ratio is the median over sets. Sets of fresh processes matter: one
    process can be a few percent faster or slower than another running the very same
    code (memory layout), which the raw-vs-raw control shows.
    """
    configs: list[dict[str, Any]] = []
    for model, accumulation, epochs, warmup, full_plan, quick_plan in STEP_CONFIGS:
        sets, blocks = quick_plan if quick else full_plan
        if quick:
            warmup = 1
        samples: dict[str, list[float]] = {r: [] for r in STEP_RUNNERS}
        set_ratios: dict[str, list[float]] = {r: [] for r in STEP_RUNNERS if r != "raw"}
        set_overheads: dict[str, list[float]] = {r: [] for r in STEP_RUNNERS if r != "raw"}
        steps_per_epoch = 0
        for s in range(sets):
            log(f"step_overhead {model} accumulation={accumulation}: set {s + 1}/{sets}")
            steps_per_epoch, got = _step_set(model, accumulation, epochs, warmup, blocks, s)
            for runner in STEP_RUNNERS:
                samples[runner] += got[runner]
                if runner != "raw":
                    set_ratios[runner].append(median(x / r for x, r in zip(got[runner], got["raw"])))
                    set_overheads[runner].append(median(x - r for x, r in zip(got[runner], got["raw"])))
        configs.append({
            "model": model,
            "accumulation": accumulation,
            "steps_per_epoch": steps_per_epoch,
            "epochs_per_block": epochs,
            "sets": sets,
            "blocks_per_set": blocks,
            "per_step_us": {r: median(samples[r]) for r in STEP_RUNNERS},
            "ratio": {r: median(v) for r, v in set_ratios.items()},
            "ratio_per_set": {r: [round(x, 4) for x in v] for r, v in set_ratios.items()},
            "overhead_us": {r: median(v) for r, v in set_overheads.items()},
            "samples_us": {r: [round(v, 1) for v in samples[r]] for r in STEP_RUNNERS},
        })
    by_key = {(c["model"], c["accumulation"]): c for c in configs}
    rows = []
    for cfg in configs:
        target = STEP_TARGETS[cfg["model"]]
        plait_ratio = cfg["ratio"]["plait"]
        accumulate = "with accumulate (k=4)" if cfg["accumulation"] > 1 else "without accumulate"
        per_set = cfg["ratio_per_set"]["plait"]
        control = cfg["ratio"]["raw_control"]
        note = (f"plait/raw per set {min(per_set):.3f}-{max(per_set):.3f}; raw/raw A/A control "
                f"{control:.3f}; plait adds {cfg['overhead_us']['plait']:.1f} us/step")
        # Not judged (noisy) when raw against itself is off by more than the margin, or the sets spread too
        # widely for their median to resolve it (``_common.judge``): this run cannot tell.
        status, why = judge(plait_ratio, target, control=control, per_set=per_set)
        note += f"; {why}" if why else ""
        rows.append(row(
            "step_overhead", f"per-step time, {MODEL_LABEL[cfg['model']]}, {accumulate}", "us/step",
            cfg["per_step_us"], cfg["ratio"], f"<= {target:.2f}x", status, note,
        ))
        tiny = by_key.get(("tiny", cfg["accumulation"]))
        if cfg["model"] == "mlp" and tiny is not None:
            # plait's per-step work (wrappers, hooks, batch placement) does not grow with the model:
            # its absolute overhead, measured precisely on the tiny model, over the MLP's step time.
            derived = {r: 1 + tiny["overhead_us"][r] / cfg["per_step_us"]["raw"] for r in ("plait", "accelerate")}
            cfg["ratio_derived_from_tiny"] = derived
            rows.append(row(
                "step_overhead",
                f"per-step time, MLP, {accumulate}: tiny's absolute overhead / MLP raw step", "us/step",
                {"raw": cfg["per_step_us"]["raw"], "plait": cfg["per_step_us"]["raw"] + tiny["overhead_us"]["plait"],
                 "accelerate": cfg["per_step_us"]["raw"] + tiny["overhead_us"]["accelerate"]},
                derived, f"<= {target:.2f}x", "info",
                "derived (so never judged): the MLP's measured spread between processes is wider than the 1% target",
            ))
    paired = _paired_mlp(quick)
    for accumulation, result in paired.items():
        target = STEP_TARGETS["mlp"]
        accumulate = "with accumulate (k=4)" if accumulation > 1 else "without accumulate"
        per_set = result["ratio_per_set"]
        note = (f"{result['steps']} steps in {len(per_set)} processes, plait/raw median per process "
                f"{min(per_set):.3f}-{max(per_set):.3f}; raw/raw A/A control {result['control']:.3f}; plait adds "
                f"{result['overhead_us']:.1f} us/step (median of the steps' differences)")
        status, why = judge(result["ratio"], target, control=result["control"], per_set=per_set)
        note += f"; {why}" if why else ""
        rows.append(row(
            "step_overhead",
            f"per-step time, MLP, {accumulate}: plait / raw, steps taking turns in one process", "us/step",
            result["per_step_us"], {"plait": result["ratio"]}, f"<= {target:.2f}x", status, note,
        ))
    instructions = None if quick else _instruction_counts(sandbox)
    for (model, accumulation), per_step in (instructions or {}).items():
        accumulate = "with accumulate (k=4)" if accumulation > 1 else "without accumulate"
        ratios = {c: per_step[c] / per_step["raw"] for c in per_step if c != "raw"}
        rows.append(row(
            "step_overhead", f"instructions per step, {MODEL_LABEL[model]}, {accumulate} (callgrind)", "instr/step",
            {c: round(v) for c, v in per_step.items()}, ratios, "-", "info",
            f"plait adds {per_step['plait'] - per_step['raw']:.0f} instructions per step; deterministic, "
            "but blind to what cache misses add to the time",
        ))
    return {
        "mode": "quick" if quick else "full",
        "instructions_per_step": {f"{m}-k{k}": v for (m, k), v in (instructions or {}).items()},
        "paired_mlp": {str(k): v for k, v in paired.items()},
        "settings": {
            "threads": 1,
            "optimizer": "SGD(lr=1e-3)",
            "loss": "mse_loss",
            "dataloader": "DataLoader(TensorDataset, shuffle=True), num_workers=0",
            "ratio": "median over sets of fresh processes of (median over blocks of contender time / raw time "
                     "of the same block)",
        },
        "results": configs,
        "rows": rows,
    }
