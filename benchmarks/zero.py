"""Two-process CPU benchmark of plait's zero backend against ``deepspeed.initialize`` by hand: step time and memory
of ZeRO stages 1-3, and memory of CPU offload and ``zero3_init`` against ddp.

    python benchmarks/zero.py            # about 25 minutes on 2 cores
    python benchmarks/zero.py --quick    # a short smoke run (about 6 minutes)

The same MLP (twelve Linear(2048, 2048), ~50M fp32 parameters), AdamW, batch 8 per
process (``_zero_worker.py``), each launch a fresh pair of processes (torchrun, gloo):
for each of ZeRO stages 1, 2 and 3, DeepSpeed by hand with the config plait's zero
backend builds, twice (``raw`` and the A/A control ``raw_control``), and plait's
``Accelerator(backend="zero")``; plus plait's ddp (the memory reference) and plait's
zero with CPU offload and with ``zero3_init``. Rounds rotate the order of launches.

On a CPU-only machine "CPU offload" moves nothing to another memory; the counts
show where DeepSpeed keeps each part.

Writes ``benchmarks/results/zero.json`` and ``benchmarks/results/zero.md``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from _common import (
    CONTROL,
    HERE,
    Sandbox,
    compare_sets,
    document,
    judge,
    launch_rounds,
    log,
    median,
    row,
    run_suite,
    table,
    torchrun,
)

WORKER = HERE / "_zero_worker.py"
#: ZeRO variants with a raw DeepSpeed anchor (and an A/A control each), and plait-only ones (against ddp).
ANCHORED: dict[str, dict[str, Any]] = {"zero1": {"stage": 1}, "zero2": {"stage": 2}, "zero3": {"stage": 3}}
PLAIT_ONLY: dict[str, dict[str, Any]] = {
    "zero2+offload": {"stage": 2, "offload_optimizer_device": "cpu"},
    "zero3+offload": {"stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "cpu"},
    "zero3+init": {"stage": 3, "zero3_init": True},
}
OPTIONS: dict[str, dict[str, Any]] = {**ANCHORED, **PLAIT_ONLY}
CONTENDERS = ("ddp", *(f"{who}-{v}" for v in ANCHORED for who in ("raw", CONTROL, "plait")),
              *(f"plait-{v}" for v in PLAIT_ONLY))
COLUMNS = ("raw", CONTROL, "plait")
LABELS = {"raw": "raw DeepSpeed", CONTROL: "raw DeepSpeed (A/A)", "plait": "plait zero"}
TARGETS = {"step": 1.02, "state": 1.00, "rss": 1.02}
PLANS = {"full": {"rounds": 3, "steps": 8, "warmup": 2}, "quick": {"rounds": 1, "steps": 2, "warmup": 1}}
PARTS = ("params", "grads", "master", "optimizer_state")
METHOD = [
    "Every launch is a fresh pair of processes (torchrun, gloo, one thread each, empty config homes, no `DS_*` "
    "variables) running one contender; a round launches each once, the order rotated from round to round. For each "
    "stage raw DeepSpeed runs twice per round (`raw`, `raw_control`): raw_control / raw, the A/A control, is what "
    "noise alone does.",
    "Raw DeepSpeed: `deepspeed.initialize(model=..., optimizer=AdamW, config=...)` after "
    "`init_process_group(\"gloo\")`, with the config plait's zero backend builds for the same options "
    "(`ds_config.build_config`: batch sizes, fp16/bf16 off, gradient_clipping 0, the stage and offload blocks, "
    "`zero_allow_untested_optimizer`, `steps_per_print`), a DistributedSampler, `engine.backward` and "
    "`engine.step`. The config plait's engine got is compared with raw's (note of the step row).",
    "Step time: forward, backward, step between two barriers, the slower rank's, median over the timed steps after "
    "the warm-up; a round's ratio is contender / raw of that round, the ratio shown the median over rounds.",
    "Memory, of the largest process: parameters (ZeRO-3: its partition), gradients (after the first backward: the "
    "parameters' `.grad` and ZeRO's gradient partitions and buffers), fp32 master weights (ZeRO's copy of its "
    "partition) and optimizer state (AdamW's moments), each storage once; and peak RSS (`ru_maxrss`).",
    "A row whose A/A control is off by more than its margin (the target's distance from 1.000x; 0 for the state "
    "bytes, which are deterministic), or whose rounds spread so widely that their median is not known to half that "
    "margin (unless the value lies more than two such uncertainties from the target), is marked noisy, not judged.",
]


def _launch(sandbox: Sandbox, plan: dict[str, int]) -> dict[str, list[list[dict[str, Any]]]]:
    def launch(contender: str, round_: int) -> list[dict[str, Any]]:
        who, _, variant = contender.partition("-")
        kind = "raw" if who == CONTROL else who
        out = sandbox.scratch / f"{contender}-{round_}.json"
        torchrun(WORKER, [kind, json.dumps(OPTIONS.get(variant, {})), str(plan["steps"]), str(plan["warmup"]),
                          str(out)], sandbox.launch_env())
        ranks: list[dict[str, Any]] = json.loads(out.read_text())
        log(f"zero {contender}: {_step(ranks):.3f} s/step, {_state(ranks) / 2**20:.0f} MiB state per process")
        return ranks

    return launch_rounds(CONTENDERS, plan["rounds"], launch, "zero")


def _step(ranks: list[dict[str, Any]]) -> float:
    return median(max(steps) for steps in zip(*(r["step_s"] for r in ranks)))


def _state(ranks: list[dict[str, Any]]) -> float:
    return float(max(sum(r[f"{p}_bytes"] for p in PARTS) for r in ranks))


def _rss(ranks: list[dict[str, Any]]) -> float:
    return float(max(r["peak_rss_bytes"] for r in ranks))


def _config_note(runs: dict[str, list[list[dict[str, Any]]]], variant: str) -> str:
    raw, plait = runs[f"raw-{variant}"][0][0]["ds_config"], runs[f"plait-{variant}"][0][0]["ds_config"]
    if raw == plait:
        return "DeepSpeed config identical to raw's"
    keys = sorted(k for k in set(raw) | set(plait) if raw.get(k) != plait.get(k))
    return f"DeepSpeed config differs from raw's at {', '.join(keys)}"


def measure(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    plan = PLANS["quick" if quick else "full"]
    runs = _launch(sandbox, plan)
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    for variant in ANCHORED:
        names = {c: f"{c}-{variant}" for c in COLUMNS}
        summary[variant] = {}
        for key, metric, scale, label, unit in (
            ("step", _step, 1.0, "step time (forward, backward, AdamW step; batch 8 per process)", "s"),
            ("state", _state, 2**20, "parameters + gradients + fp32 master + AdamW state per process", "MiB"),
            ("rss", _rss, 2**20, "peak resident memory per process (whole process)", "MiB"),
        ):
            result = compare_sets([{c: [metric(runs[n][r]) / scale] for c, n in names.items()}
                                   for r in range(plan["rounds"])])
            summary[variant][key] = result
            ratio, target = result["ratio"], TARGETS[key]
            status, why = judge(ratio["plait"], target, control=ratio[CONTROL],
                                per_set=result["ratio_per_set"]["plait"])
            note = _config_note(runs, variant) if key == "step" else ""
            rows.append(row(f"ZeRO stage {OPTIONS[variant]['stage']}", label, unit, result["value"], ratio,
                            f"<= {target:.2f}x raw", status, "; ".join(filter(None, [note, why])), columns=COLUMNS))
    breakdown = []
    ddp_state = runs["ddp"][0][0]["optimizer_state_bytes"]
    ddp_step = median(_step(ranks) for ranks in runs["ddp"])
    for name in CONTENDERS:
        r0 = runs[name][0][0]
        step = median(_step(ranks) for ranks in runs[name])
        breakdown.append({
            "contender": name, "parameters": r0["numel"],
            **{f"{p}_mib": r0[f"{p}_bytes"] / 2**20 for p in PARTS}, **{f"{p}_on": r0[f"{p}_on"] for p in PARTS},
            "peak_rss_mib": median(_rss(ranks) for ranks in runs[name]) / 2**20, "step_s": step,
            "step_vs_ddp": step / ddp_step, "optimizer_state_vs_ddp": r0["optimizer_state_bytes"] / ddp_state,
        })
    return {
        "settings": {**plan, "threads": 1, "backend": "gloo", "optimizer": "AdamW(lr=1e-4)",
                     "model": "12 x Linear(2048, 2048), ReLU between, fp32", "options": OPTIONS},
        "targets": TARGETS,
        "results": {"anchored": summary, "breakdown": breakdown, "runs": runs},
        "rows": rows,
    }


def page(results: dict[str, Any]) -> str:
    body = table(results["rows"], COLUMNS, LABELS)
    breakdown = results["results"]["breakdown"]
    extra = [
        f"Every contender, memory per process (rank 0; rank 1 holds the same), {breakdown[0]['parameters'] / 1e6:.1f}M "
        "parameters; step time the median over rounds (info: only the rows above are judged):", "",
        "| contender | parameters (MiB) | gradients (MiB) | fp32 master weights (MiB) | optimizer state (MiB) "
        "| optimizer state vs ddp | peak RSS (MiB) | step (s) | step vs ddp |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in breakdown:
        cells = [f"{r[f'{p}_mib']:,.0f} ({r[f'{p}_on']})" for p in PARTS]
        extra.append(f"| {r['contender']} | {' | '.join(cells)} | {r['optimizer_state_vs_ddp']:.2f}x | "
                     f"{r['peak_rss_mib']:,.0f} | {r['step_s']:.3f} | {r['step_vs_ddp']:.2f}x |")
    extra += [
        "",
        "`(cpu)` is where each part lives; on this CPU-only machine offload changes which code runs the step, not "
        "which memory holds it. Peak RSS is the whole process (torch, DeepSpeed, gloo buffers). `zero3+init` builds "
        "the model inside `plait_zero.zero3_init(accelerator)`: each layer is partitioned as soon as it is built, so "
        "no process ever holds the full model.",
    ]
    return document("plait zero benchmarks (2 CPU processes, gloo)", "python benchmarks/zero.py", results, body,
                    METHOD, extra)


def main(argv: list[str] | None = None) -> int:
    return run_suite(argv, name="zero", doc=__doc__ or "", measure=measure, page=page, versions=("deepspeed",))


if __name__ == "__main__":
    sys.exit(main())
