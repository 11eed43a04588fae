"""The xla backend on XLA's CPU device: the MLP's step time against eager PyTorch on the CPU (information), and
the graphs XLA compiles over the steps after warm-up (must be none: no recompilation per step, nor per micro-step
of gradient accumulation).

    PJRT_DEVICE=CPU python benchmarks/xla.py            # in the xla virtualenv (torch 2.9 + torch_xla 2.9), ~3 min
    PJRT_DEVICE=CPU python benchmarks/xla.py --quick    # a short smoke run

Run it in an environment with plait-xla installed, e.g. the nox session's: ``nox -s xla`` creates
``.nox/xla``; then ``PJRT_DEVICE=CPU .nox/xla/bin/python benchmarks/xla.py``.

A 3-layer MLP (width 512, batch 64, AdamW) trains under plait's ``backend="xla"``
(``_xla_worker.py``), without and with gradient accumulation of 4, and the same loop runs in eager
PyTorch on the CPU; each run is a fresh process, rounds rotating the order. The graphs compiled are
torch_xla's ``CompileTime`` metric (one sample per compilation), read after the warm-up steps and after
the measured steps. Writes ``benchmarks/results/xla.json`` and ``benchmarks/results/xla.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from _common import HERE, Sandbox, document, launch_rounds, median, row, run_suite, table

WORKER = HERE / "_xla_worker.py"
CONTENDERS = ("eager", "xla")
LABELS = {"eager": "eager CPU", "xla": "plait xla (XLA CPU device)"}
PLANS = {"full": {"rounds": 2, "warmup": 5, "steps": 100}, "quick": {"rounds": 1, "warmup": 3, "steps": 20}}
METHOD = [
    "each contender runs in a fresh process (`_xla_worker.py`), rounds rotating the order; `PJRT_DEVICE=CPU`",
    "step time: wall time of each optimizer step after the warm-up, waiting for its result (`loss.item()`); the "
    "median over steps, then over rounds (information: XLA's CPU device is not what torch_xla is for)",
    "graphs compiled: torch_xla's `CompileTime` metric after the warm-up and after the measured steps; the target "
    "is that the difference is 0 (the same graphs every step, and no graph per accumulation micro-step)",
]


def _run(sandbox: Sandbox, mode: str, accumulation: int, plan: dict[str, int], index: int) -> dict[str, Any]:
    out = sandbox.scratch / f"{mode}-{accumulation}-{index}.json"
    command = [sys.executable, str(WORKER), mode, str(accumulation), str(plan["warmup"]), str(plan["steps"]), str(out)]
    env = sandbox.env(extra={"PJRT_DEVICE": os.environ.get("PJRT_DEVICE", "CPU"), "TF_CPP_MIN_LOG_LEVEL": "2"})
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, cwd=HERE)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def measure(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    plan = PLANS["quick" if quick else "full"]
    runs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for accumulation in (1, 4):
        def launch(name: str, index: int, k: int = accumulation) -> dict[str, Any]:
            return _run(sandbox, name, k, plan, index)

        results = launch_rounds(CONTENDERS, plan["rounds"], launch, f"accumulation {accumulation}")
        runs[str(accumulation)] = results
        step = {name: median(median(r["step_s"]) for r in results[name]) * 1000 for name in CONTENDERS}
        label = f"MLP, accumulation {accumulation}" if accumulation > 1 else "MLP"
        rows.append(row(label, f"step time ({accumulation} micro-step{'s' if accumulation > 1 else ''} of batch "
                        f"64)", "ms", step, {"xla": step["xla"] / step["eager"]}, "info", "info", columns=CONTENDERS))
        new_graphs = [r["graphs_at_end"] - r["graphs_after_warmup"] for r in results["xla"]]
        warm = [r["graphs_after_warmup"] for r in results["xla"]]
        rows.append(row(label, f"graphs compiled over {plan['steps']} steps after warm-up", "graphs",
                        {"xla": float(max(new_graphs))}, None, "0", "PASS" if max(new_graphs) == 0 else "FAIL",
                        f"{warm[0]} graphs compiled during the {plan['warmup']} warm-up steps", columns=CONTENDERS))
    return {"rows": rows, "results": runs, "settings": plan}


def page(results: dict[str, Any]) -> str:
    body = table(results["rows"], CONTENDERS, LABELS)
    return document("plait xla on XLA's CPU device", "PJRT_DEVICE=CPU python benchmarks/xla.py", results, body, METHOD)


if __name__ == "__main__":
    sys.exit(run_suite(sys.argv[1:], name="xla", doc=__doc__ or "", measure=measure, page=page,
                       versions=("torch_xla",)))
