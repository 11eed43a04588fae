"""Benchmark runner: plait against raw PyTorch and HF Accelerate, side by side in one run.

    python benchmarks/run.py                 # everything (about 7 minutes on 2 cores)
    python benchmarks/run.py --quick         # a short smoke run (about a minute)
    python benchmarks/run.py --only startup  # one benchmark (merged into the existing results)

Writes ``benchmarks/results/core.json`` (every number) and ``benchmarks/results/core.md``
(the table, small enough to commit), and prints the table. This process imports
neither torch, plait nor accelerate: each contender runs in fresh subprocesses of
its own (see ``_step_worker.py``, ``_checkpoint_worker.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Sandbox, machine_info, table, write_results
from suite_core import BENCHMARKS, TARGETS, heaviest_imports_over_target

SUITE = "core"
RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (few repeats, a 10M-parameter checkpoint)")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append", metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help="where core.json and core.md go")
    parser.add_argument("--tmpdir", default=None,
                        help="scratch directory for checkpoints and caches (default: the system's temp dir)")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- rendering
def markdown(results: dict[str, Any]) -> str:
    """core.md: the table (``_common.table``), the notes, how it is measured, and plait's heaviest imports."""
    machine = results["machine"]
    rows = [r for name in BENCHMARKS if name in results["benchmarks"] for r in results["benchmarks"][name]["rows"]]
    runs = ", ".join(f"{n}: {e['mode']} run, {e['finished']}" for n, e in results["benchmarks"].items())
    out = [
        "# plait core benchmarks",
        "",
        f"Generated {results['generated']} by `python benchmarks/run.py` "
        f"({runs}).",
        "",
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['memory_gib']} GiB; "
        f"Python {machine['python']}, torch {machine['torch']}, plait {machine['plait']}, "
        f"accelerate {machine['accelerate']}, safetensors {machine['safetensors']}; {machine['platform']}.",
        "",
        table(rows),
        "",
        "Notes (every raw sample is in core.json):",
        "",
        *[f"- {r['measurement']}: {r['note']}" for r in rows if r.get("note")],
        "",
        "How it is measured:",
        "",
        "- Every contender runs in fresh processes of its own, forked from a server that has imported "
        "torch and nothing else (each then imports plait or accelerate itself); the runner imports none "
        "of them, and gives every process an empty config home.",
        "- step_overhead: several sets of fresh processes per configuration; `torch.set_num_threads(1)`, SGD, MSE loss, "
        "DataLoader(TensorDataset, shuffle=True). The runner times blocks of epochs in each process in "
        "turn (rotating the order), so each block gives a paired ratio; a set's ratio is the median of its "
        "blocks', the ratio shown the median over sets, the time per step the median over all blocks. "
        "Each set also runs raw PyTorch a second time as a contender (A/A control, in the note): its "
        "distance from 1.000x is the noise of the machine and of process-to-process differences, and a row "
        "whose control is off by more than the margin it judges, or whose sets spread so widely that their "
        "median is not known to half that margin (1.25 sigma / sqrt(sets), sigma from the IQR) (unless the value lies more than two such uncertainties from the target), is "
        "marked noisy, not judged. On a "
        "shared 2-core machine that noise is often wider than 1%, so the MLP is also measured inside one "
        "process, plait's loop and two raw ones taking turns step by step in a drawn order, each on its own "
        "identical copy of the model and data (the second raw copy is that row's A/A control), and derived "
        "from the "
        "tiny model's absolute overhead (us/step, which does not grow with the model) over the MLP's raw "
        "step time. Instruction counts (valgrind's callgrind, where installed; `_instructions.py`) count "
        "what each loop executes per step over 4 epochs after 2 warm-up epochs, start-up excluded: the "
        "same code gives the same count whatever else the machine runs.",
        "- startup: fresh `python -c` processes, interleaved, with one warmed bytecode cache for all. The "
        "verdict is on the in-process time of `import plait; plait.Accelerator` after `import torch`; "
        "the wall-time difference is shown for reference (the spread of `import torch` alone is larger "
        "than the target).",
        "- checkpoint: AdamW after one step; one checkpoint on disk at a time; `os.sync()` before each "
        "save; throughput = bytes in the checkpoint directory / seconds of the call, median over trials "
        "(contenders interleaved, rotating), ratio = ratio of medians; the save is also shown as the fastest "
        "of the trials, since on a shared VM the noise of a save (page-cache allocation, other tenants' I/O) "
        "is several times the difference measured. Loads are resumes: each in a fresh worker that builds the "
        "model and its AdamW state and loads its contender's checkpoint once, warm (files in the page cache) "
        "or cold (after `posix_fadvise(DONTNEED)` of every file); raw loads raw's files a second time per "
        "trial as the A/A control; ratios are medians of each trial's paired ratio. Raw loads are "
        "`load_file` + `load_state_dict` and `torch.load(weights_only=True)` + `load_state_dict`; plait's "
        "include every check (the manifest, each file's XXH3 checksum, each state against its target). plait "
        "hashes each file from a copy-on-write mapping and loads its tensors from that mapping: the "
        "optimizer's state tensors stay views of it, so the first `optimizer.step()` after the load copies "
        "the pages it writes, where raw's `torch.load` allocates and fills them during the load.",
    ]
    startup = results["benchmarks"].get("startup")
    heavy = heaviest_imports_over_target(startup) if startup else None
    if heavy:
        out += [
            "",
            f"plait's start-up is over its {TARGETS['startup_ms']:.0f} ms target; its heaviest imports "
            "(`python -X importtime`, self time, least of 3 runs):",
            "",
            "| module | self ms | cumulative ms |",
            "| --- | ---: | ---: |",
        ]
        out += [f"| {i['module']} | {i['self_ms']:.1f} | {i['cumulative_ms']:.1f} |" for i in heavy]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- files
def _previous(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("benchmarks"), dict) else {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from importlib.util import find_spec

    missing = [name for name in ("torch", "plait", "accelerate", "safetensors") if find_spec(name) is None]
    if missing:
        print(f"benchmarks need {', '.join(missing)} installed in this Python ({sys.executable}): "
              f"run `nox -s bench`, or pip install -c constraints.txt -e packages/core accelerate", file=sys.stderr)
        return 2
    names = args.only or list(BENCHMARKS)
    json_path = args.results_dir / f"{SUITE}.json"
    md_path = args.results_dir / f"{SUITE}.md"
    # One benchmark alone replaces its own entry and keeps the others' last results.
    previous = _previous(json_path) if args.only else {}
    benchmarks: dict[str, Any] = dict(previous.get("benchmarks", {}))
    sandbox = Sandbox(args.tmpdir)
    sandbox.enter()
    started = time.perf_counter()
    try:
        for name in names:
            entry = BENCHMARKS[name](sandbox, args.quick)
            entry["finished"] = time.strftime("%Y-%m-%d %H:%M")
            benchmarks[name] = entry
    finally:
        sandbox.close()
    results: dict[str, Any] = {
        "suite": SUITE,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine_info(),
        "targets": TARGETS,
        "benchmarks": {n: benchmarks[n] for n in BENCHMARKS if n in benchmarks},
    }
    results["summary"] = [r for entry in results["benchmarks"].values() for r in entry["rows"]]
    write_results(args.results_dir, SUITE, results, markdown(results))
    print(table(results["summary"]))
    print(f"\nwrote {json_path} and {md_path} in {results['duration_s']:.0f} s")
    failed = [r["measurement"] for r in results["summary"] if r["status"] == "FAIL"]
    if failed:
        print(f"{len(failed)} target(s) missed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
