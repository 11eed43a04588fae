"""Two-process CPU benchmarks: training throughput and gather latency, plait against raw DDP and HF Accelerate.

    python benchmarks/ddp.py            # about 5 minutes on 2 cores
    python benchmarks/ddp.py --quick    # a short smoke run (about 2 minutes)

Throughput: every contender is the same training loop (``_ddp_worker.py train``)
started the same way, by torchrun (``--standalone --nproc-per-node=2``) over gloo:
raw PyTorch (DistributedDataParallel + DistributedSampler) twice (``raw`` and the
A/A control ``raw_control``), plait (``Accelerator()``), and HF Accelerate
(``Accelerator(cpu=True)`` with ``ACCELERATE_USE_CPU=1``: ``accelerate launch --cpu
--num_processes 2`` starts only one process on a CPU machine). Each launch is a
fresh pair of processes running one contender; a round launches each once, in an
order rotated from round to round; ratios are paired by round.

Gather: ``accelerator.gather`` against the collective it wraps, called by hand as
gather must (a new output, then ``all_gather_single``), twice, in the same two
processes, call by call in a drawn order (``_ddp_worker.py gather``); several
launches (fresh processes) are the sets.

Writes ``benchmarks/results/ddp.json`` and ``benchmarks/results/ddp.md``.
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
    row,
    run_suite,
    table,
    torchrun,
)

WORKER = HERE / "_ddp_worker.py"
TRAIN = ("raw", CONTROL, "plait", "accelerate")
GATHER = ("raw", CONTROL, "plait")
COLUMNS = ("raw", CONTROL, "plait", "accelerate")
LABELS = {CONTROL: "raw (A/A)"}
TARGETS = {"throughput": 0.97, "gather": 1.10}
#: rounds of launches, timed steps and warm-up steps per launch, gather launches, rounds of gather calls per launch
PLANS = {
    "full": {"rounds": 5, "steps": 150, "warmup": 10, "gather_sets": 5, "gather_rounds": 2000, "gather_warmup": 50},
    "quick": {"rounds": 1, "steps": 30, "warmup": 5, "gather_sets": 2, "gather_rounds": 300, "gather_warmup": 20},
}
METHOD = [
    "Every launch is a fresh pair of processes (torchrun, gloo, one thread each, empty config homes) running one "
    "contender; raw PyTorch runs twice per round, as `raw` and as `raw_control`, and raw_control / raw (the A/A "
    "control) is what the machine's noise alone does.",
    "Throughput: steps per second over the timed steps after the warm-up (rank 0, between two barriers). A round "
    "launches every contender once, the order rotated from round to round; a round's ratio is contender / raw of "
    "that round, the ratio shown the median over rounds.",
    "Gather: raw, raw_control and plait in the same two processes take turns call by call, in an order drawn for "
    "each round (the same draw on both ranks), after the same warm-up; each call is timed on both ranks and counts "
    "as the slower rank's time. The raw contenders do what gather must: a new output tensor, then the same "
    "`all_gather_single` plait calls. A launch's ratio is the median of its rounds' ratios, the ratio shown the "
    "median over launches (fresh processes); times are medians over every call.",
    "A row whose A/A control is off by more than its margin (the target's distance from 1.000x), or whose rounds "
    "spread so widely that their median is not known to half that margin (1.25 sigma / sqrt(rounds), sigma from "
    "the IQR) (unless the value lies more than two such uncertainties from the target), is marked noisy, not judged.",
]


def _train(sandbox: Sandbox, plan: dict[str, int]) -> dict[str, list[float]]:
    def launch(contender: str, round_: int) -> float:
        out = sandbox.scratch / f"train-{contender}-{round_}.json"
        extra = {"ACCELERATE_USE_CPU": "1"} if contender == "accelerate" else {}
        torchrun(WORKER, ["train", contender, str(plan["steps"]), str(plan["warmup"]), str(out)],
                 sandbox.launch_env(extra))
        value = float(json.loads(out.read_text())["steps_per_s"])
        log(f"ddp throughput {contender}: {value:.1f} steps/s")
        return value

    return launch_rounds(TRAIN, plan["rounds"], launch, "ddp throughput")


def _gather(sandbox: Sandbox, plan: dict[str, int]) -> dict[str, list[dict[str, list[float]]]]:
    sets: dict[str, list[dict[str, list[float]]]] = {}
    for s in range(plan["gather_sets"]):
        log(f"ddp gather: launch {s + 1}/{plan['gather_sets']}")
        out = sandbox.scratch / f"gather-{s}.json"
        torchrun(WORKER, ["gather", str(plan["gather_rounds"]), str(plan["gather_warmup"]), str(s), str(out)],
                 sandbox.launch_env())
        for numel, samples in json.loads(out.read_text()).items():
            sets.setdefault(numel, []).append(samples)
    return sets


def measure(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    plan = PLANS["quick" if quick else "full"]
    throughput = _train(sandbox, plan)
    gathered = _gather(sandbox, plan)
    rows = []
    summary: dict[str, Any] = {}
    per_round = compare_sets([{c: [throughput[c][r]] for c in TRAIN} for r in range(plan["rounds"])])
    summary["throughput"] = {**per_round, "samples_steps_per_s": throughput}
    ratio, control = per_round["ratio"], per_round["ratio"][CONTROL]
    target = TARGETS["throughput"]
    status, why = judge(ratio["plait"], target, control=control, per_set=per_round["ratio_per_set"]["plait"],
                        higher_is_better=True)
    note = (f"plait/raw per round {min(per_round['ratio_per_set']['plait']):.3f}-"
            f"{max(per_round['ratio_per_set']['plait']):.3f} over {plan['rounds']} rounds")
    rows.append(row("throughput", "2-process training, MLP 256-512-512-1, batch 64 per process, SGD", "steps/s",
                    per_round["value"], ratio, f">= {target:.2f}x raw", status, "; ".join(filter(None, [note, why])),
                    columns=COLUMNS))
    summary["gather"] = {}
    for numel, sets in gathered.items():
        compared = compare_sets(sets)
        summary["gather"][numel] = {k: v for k, v in compared.items()}
        summary["gather"][numel]["calls_per_contender"] = sum(len(s["raw"]) for s in sets)
        ratio, control = compared["ratio"], compared["ratio"][CONTROL]
        target = TARGETS["gather"]
        status, why = judge(ratio["plait"], target, control=control, per_set=compared["ratio_per_set"]["plait"])
        note = (f"{summary['gather'][numel]['calls_per_contender']} calls each in {len(sets)} launches; plait adds "
                f"{compared['difference']['plait']:.1f} us per call (median of paired differences)")
        rows.append(row("gather", f"`accelerator.gather` latency, {int(numel)} float32 per process", "us",
                        compared["value"], ratio, f"<= {target:.2f}x raw", status,
                        "; ".join(filter(None, [note, why])), columns=COLUMNS))
    return {
        "settings": {**plan, "threads": 1, "backend": "gloo", "launcher": "python -m torch.distributed.run "
                     "--standalone --nproc-per-node=2", "gather_collective": "torch.distributed.all_gather_single"},
        "targets": TARGETS,
        "results": summary,
        "rows": rows,
    }


def page(results: dict[str, Any]) -> str:
    body = table(results["rows"], COLUMNS, LABELS)
    return document("plait ddp benchmarks (2 CPU processes, gloo)", "python benchmarks/ddp.py", results, body, METHOD)


def main(argv: list[str] | None = None) -> int:
    return run_suite(argv, name="ddp", doc=__doc__ or "", measure=measure, page=page)


if __name__ == "__main__":
    sys.exit(main())
