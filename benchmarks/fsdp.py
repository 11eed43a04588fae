"""Two-process CPU benchmark of plait's fsdp backend against FSDP2 by hand: step time and per-process memory.

    python benchmarks/fsdp.py            # about 10 minutes on 2 busy cores
    python benchmarks/fsdp.py --quick    # a short smoke run (about 3 minutes)

The same ~50M-parameter transformer-style model (4 pre-norm blocks, width 1024)
trains with AdamW on the same data (``_fsdp_worker.py``) under raw FSDP2
(``fully_shard`` by hand, sharded as plait's backend shards it), twice (``raw`` and
the A/A control ``raw_control``), under plait's ``backend="fsdp"``, and under plait's
``backend="ddp"`` (the reference of the memory target), each launch a fresh pair
of processes (torchrun, gloo), rounds rotating the order.

Memory is the bytes of the tensors a process holds for training after an optimizer
step: parameters, gradients and optimizer state (AdamW's two moments and step),
counting each storage once and, for fsdp, the local shard of each DTensor. DDP's
gradient buckets (one more gradient-sized buffer) are not counted, which favours
ddp. The peak resident set size of each process is reported beside it.

Writes ``benchmarks/results/fsdp.json`` and ``benchmarks/results/fsdp.md``.
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

WORKER = HERE / "_fsdp_worker.py"
CONTENDERS = ("raw", CONTROL, "plait", "ddp")
LABELS = {"raw": "raw FSDP2", CONTROL: "raw FSDP2 (A/A)", "plait": "plait fsdp", "ddp": "plait ddp"}
TARGETS = {"step": 1.02, "state": 1.00, "rss": 1.02, "state_vs_ddp": 0.55}
PLANS = {"full": {"rounds": 3, "steps": 8, "warmup": 2}, "quick": {"rounds": 1, "steps": 3, "warmup": 1}}
KINDS = ("parameters", "gradients", "optimizer")
METHOD = [
    "Every launch is a fresh pair of processes (torchrun, gloo, one thread each, empty config homes) running one "
    "contender; a round launches each once, the order rotated from round to round. Raw FSDP2 runs twice per "
    "round (`raw`, `raw_control`): raw_control / raw, the A/A control, is what noise alone does.",
    "Raw FSDP2: `fully_shard(block, reshard_after_forward=True)` on each Block, last first, then "
    "`fully_shard(model, reshard_after_forward=False)`, on a 1-d CPU mesh, default mixed-precision and offload "
    "policies (what plait's fsdp backend applies for `transformer_layer_cls_to_wrap: Block`); AdamW(lr=1e-4) on the "
    "sharded parameters. plait: `Accelerator(backend=\"fsdp\", backend_options={\"transformer_layer_cls_to_wrap\": "
    "\"Block\"})`, model and AdamW prepared.",
    "Step time: forward, backward, AdamW step between two barriers, the slower rank's, median over the timed steps "
    "after the warm-up; a round's ratio is contender / raw of that round, the ratio shown the median over rounds.",
    "Memory: parameters + gradients + optimizer state after the first step (each storage once, the local shard of "
    "each DTensor), and peak RSS (`ru_maxrss`), of the largest process.",
    "A row whose A/A control is off by more than its margin (the target's distance from 1.000x; 0 for the state "
    "bytes, which are deterministic), or whose rounds spread so widely that their median is not known to half that "
    "margin (unless the value lies more than two such uncertainties from the target), is marked noisy, not judged. Rows without a target are info.",
]


def _launch(sandbox: Sandbox, plan: dict[str, int]) -> dict[str, list[list[dict[str, Any]]]]:
    def launch(contender: str, round_: int) -> list[dict[str, Any]]:
        out = sandbox.scratch / f"{contender}-{round_}.json"
        torchrun(WORKER, [contender, str(plan["steps"]), str(plan["warmup"]), str(out)], sandbox.launch_env())
        ranks: list[dict[str, Any]] = json.loads(out.read_text())
        log(f"fsdp {contender}: {_step(ranks):.3f} s/step, {_state(ranks) / 2**20:.1f} MiB state per process")
        return ranks

    return launch_rounds(CONTENDERS, plan["rounds"], launch, "fsdp")


def _step(ranks: list[dict[str, Any]]) -> float:
    """Median over steps of the slower rank's step time."""
    return median(max(steps) for steps in zip(*(r["step_s"] for r in ranks)))


def _state(ranks: list[dict[str, Any]], kind: str | None = None) -> float:
    return float(max(r["memory"][kind] if kind else sum(r["memory"].values()) for r in ranks))


def _rss(ranks: list[dict[str, Any]]) -> float:
    return float(max(r["max_rss_bytes"] for r in ranks))


def measure(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    plan = PLANS["quick" if quick else "full"]
    runs = _launch(sandbox, plan)
    rounds = range(plan["rounds"])

    def compared(metric: Any, scale: float = 1.0) -> dict[str, Any]:
        return compare_sets([{c: [metric(runs[c][r]) / scale] for c in CONTENDERS} for r in rounds])

    step = compared(_step)
    state = compared(_state, 2**20)
    rss = compared(_rss, 2**20)
    parts = {k: compared(lambda ranks, k=k: _state(ranks, k), 2**20) for k in KINDS}
    params = runs["raw"][0][0]["parameters_total"]
    rows = []

    def judged(name: str, measurement: str, unit: str, result: dict[str, Any], key: str, note: str = "") -> None:
        target = TARGETS[key]
        ratio = result["ratio"]
        status, why = judge(ratio["plait"], target, control=ratio[CONTROL], per_set=result["ratio_per_set"]["plait"])
        rows.append(row(name, measurement, unit, result["value"], ratio, f"<= {target:.2f}x raw", status,
                        "; ".join(filter(None, [note, why])), columns=CONTENDERS))

    judged("step", "step time (forward, backward, AdamW step; batch 4x16 tokens per process)", "s", step, "step",
           f"plait adds {step['difference']['plait'] * 1e3:.0f} ms/step (median over rounds)")
    judged("memory", f"parameters + gradients + AdamW state per process ({params / 1e6:.1f}M parameters)", "MiB",
           state, "state")
    for kind in KINDS:
        rows.append(row("memory", f"  of which {kind}", "MiB", parts[kind]["value"], parts[kind]["ratio"], "-", "info",
                        columns=CONTENDERS))
    judged("memory", "peak resident memory per process (whole process, incl. torch)", "MiB", rss, "rss")
    # The fsdp backend against plait's own ddp: the sharding target (deterministic bytes, so no A/A noise).
    vs_ddp = state["value"]["plait"] / state["value"]["ddp"]
    target = TARGETS["state_vs_ddp"]
    status, why = judge(vs_ddp, target, control=state["ratio"][CONTROL], per_set=[])
    rows.append(row("memory", "parameters + gradients + AdamW state, plait fsdp / plait ddp", "MiB", state["value"],
                    state["ratio"], f"plait <= {target:.2f}x ddp", status,
                    "; ".join(filter(None, [f"plait fsdp / plait ddp = {vs_ddp:.3f}x", why])), columns=CONTENDERS))
    return {
        "settings": {**plan, "threads": 1, "backend": "gloo", "optimizer": "AdamW(lr=1e-4)",
                     "model": "4 pre-norm blocks, width 1024, 16 heads, head Linear(1024, 1024)",
                     "plait_backend_options": {"transformer_layer_cls_to_wrap": "Block"}},
        "targets": TARGETS,
        "results": {"step_s": step, "state_mib": state, "rss_mib": rss, "parts_mib": parts, "runs": runs},
        "rows": rows,
    }


def page(results: dict[str, Any]) -> str:
    body = table(results["rows"], CONTENDERS, LABELS)
    extra = ["Memory counts each storage once (for fsdp the local shard); DDP's gradient buckets, an extra "
             "gradient-sized buffer per process, are not counted, which favours ddp. On 2 cores shared with other "
             "work, step times are noisy: the A/A control says how much."]
    return document("plait fsdp benchmark (2 CPU processes, gloo)", "python benchmarks/fsdp.py", results, body,
                    METHOD, extra)


def main(argv: list[str] | None = None) -> int:
    return run_suite(argv, name="fsdp", doc=__doc__ or "", measure=measure, page=page)


if __name__ == "__main__":
    sys.exit(main())
