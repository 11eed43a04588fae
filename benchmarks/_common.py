"""The one harness of every benchmark suite: timing comparisons, the A/A control, verdicts, results files.

The method (that of the core suite, ``run.py``) in short: every contender runs in
fresh processes of its own (``_workers.Worker``, or a torchrun launch per contender);
contenders take turns, in an order rotated from one round (or block) to the next;
raw PyTorch runs twice, as two contenders (``raw`` and ``raw_control``), and the
second's ratio over the first (the A/A control) is what noise alone does. A row is
judged (PASS/FAIL) only when its control is within the row's margin and its sets
agree well enough to resolve that margin; otherwise it is ``noisy``. Rows derived
from other rows, and rows without a target, are ``info``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from _workers import Channel, Worker, WorkerError, serve

__all__ = [
    "CONTENDERS", "CONTROL", "HERE", "Channel", "Sandbox", "Worker", "WorkerError", "compare_sets", "document",
    "judge", "launch_rounds", "log", "machine_info", "median", "quartiles", "rotated", "row", "run_suite", "serve",
    "table", "torchrun", "uncertainty", "write_results",
]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONTENDERS = ("raw", "plait", "accelerate")
#: The A/A control: raw PyTorch again, timed as a contender of its own.
CONTROL = "raw_control"
T = TypeVar("T")


# ---------------------------------------------------------------------------- statistics
def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the values themselves when fewer than 2)."""
    values = sorted(values)
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def rotated(items: Sequence[str], shift: int) -> list[str]:
    """``items`` rotated by ``shift``: each contender goes first, second and last equally often."""
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


def uncertainty(per_set: Sequence[float]) -> float:
    """How well the median of ``per_set`` is known: 1.25 sigma / sqrt(sets), sigma from the IQR (0 for one set)."""
    if len(per_set) < 2:
        return 0.0
    low, high = quartiles(per_set)
    return 1.2533 * (high - low) / 1.349 / math.sqrt(len(per_set))


def compare_sets(sets: Sequence[Mapping[str, Sequence[float]]], base: str = "raw") -> dict[str, Any]:
    """Paired comparison of contenders over sets of fresh processes.

    Each set maps a contender to its samples; sample i of every contender of a set was
    taken in the same block (or round), so ``x[i] / base[i]`` is a paired ratio. A
    set's ratio is the median of its blocks' ratios, the ratio the median over sets
    (each set is one draw of process-to-process differences); ``value`` is the median
    of all samples, ``difference`` the median over sets of the median paired difference.
    """
    names = list(sets[0])
    others = [c for c in names if c != base]
    per_set = {c: [median(x / b for x, b in zip(s[c], s[base])) for s in sets] for c in others}
    differences = {c: [median(x - b for x, b in zip(s[c], s[base])) for s in sets] for c in others}
    return {
        "sets": len(sets),
        "value": {c: median(v for s in sets for v in s[c]) for c in names},
        "ratio": {c: median(v) for c, v in per_set.items()},
        "ratio_per_set": {c: [round(x, 4) for x in v] for c, v in per_set.items()},
        "difference": {c: median(v) for c, v in differences.items()},
    }


def _percent(value: float) -> str:
    return f"{value:.0%}" if abs(value * 100 - round(value * 100)) < 1e-9 else f"{value:.1%}"


def judge(value: float, target: float, *, control: float, per_set: Sequence[float], higher_is_better: bool = False,
          unit: str | None = None) -> tuple[str, str]:
    """The verdict on one row: ``PASS``/``FAIL``, or ``noisy`` (with the reason, for the row's note).

    For a ratio over raw (``unit`` None) the margin is the target's distance from 1.000x,
    the control is raw_control / raw and ``per_set`` the ratio of each set. For an absolute
    target (``unit`` given) the margin is the target itself and the control is the A/A
    difference (raw_control - raw) in that unit. The row is ``noisy`` when the control is
    off by more than the margin, or the median over sets is not known to half of it while the value lies
    within two of those uncertainties of the target (a value farther away stands whatever the spread).
    """
    met = value >= target if higher_is_better else value <= target
    status = "PASS" if met else "FAIL"
    if unit is None:
        margin, off = abs(target - 1), abs(control - 1)
        spread = uncertainty(per_set)
        described = (f"A/A control {_percent(off)} off, median known to +-{_percent(spread)}, "
                     f"against a {_percent(margin)} margin")
    else:
        margin, off = abs(target), abs(control)
        spread = uncertainty(per_set)
        described = f"A/A control {off:.3g} {unit} off, median known to +-{spread:.3g} {unit}, against {margin:g} {unit}"
    if off > margin or (spread > margin / 2 and abs(value - target) <= 2 * spread):
        return "noisy", f"not judged: {described}"
    return status, ""


def launch_rounds(contenders: Sequence[str], rounds: int, launch: Callable[[str, int], T],
                  label: str) -> dict[str, list[T]]:
    """Run each contender once per round, each in fresh processes (``launch(contender, round)``), in an order
    rotated from round to round; every contender's results, round by round."""
    results: dict[str, list[T]] = {c: [] for c in contenders}
    for r in range(rounds):
        for c in rotated(contenders, r):
            log(f"{label}: round {r + 1}/{rounds}, {c}")
            results[c].append(launch(c, r))
    return results


# ---------------------------------------------------------------------------- rows and tables
def row(benchmark: str, measurement: str, unit: str, values: Mapping[str, float | None],
        ratios: Mapping[str, float | None] | None, target: str, status: str, note: str = "", *,
        columns: Sequence[str] = CONTENDERS, control: float | None = None) -> dict[str, Any]:
    """One line of a summary table: ``values`` and ``ratios`` (over ``columns[0]``) keyed by contender;
    ``control`` is the row's A/A control ratio, where the table shows one."""
    line: dict[str, Any] = {"benchmark": benchmark, "measurement": measurement, "unit": unit}
    line.update({c: values.get(c) for c in columns})
    line.update({f"{c}_ratio": (ratios or {}).get(c) for c in columns[1:]})
    if control is not None:
        line["control_ratio"] = control
    line.update({"target": target, "status": status, "note": note})
    return line


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "GB/s":
        return f"{value:.2f}"
    if unit == "ms":
        return f"{value:.1f}"
    if unit == "MiB":
        return f"{value:,.1f}"
    if unit == "s":
        return f"{value:.3f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = CONTENDERS,
          labels: Mapping[str, str] | None = None, control: bool = False, verdict: str = "plait") -> str:
    """The markdown table of ``rows``: a value column per contender, a ratio column per contender over the
    first, the A/A control column when ``control``, the target and the verdict."""
    name = dict(labels or {})
    base = name.get(columns[0], columns[0])
    heads = [name.get(c, c) for c in columns] + [f"{name.get(c, c)} / {base}" for c in columns[1:]]
    heads += ["A/A control"] if control else []
    lines = ["| " + " | ".join(["benchmark", "measurement", "unit", *heads, "target", verdict]) + " |",
             "| " + " | ".join(["---"] * 3 + ["---:"] * (len(heads)) + ["---", "---"]) + " |"]
    for r in rows:
        cells = [r["benchmark"], r["measurement"], r["unit"]]
        cells += [_number(r.get(c), r["unit"]) for c in columns]
        cells += [_ratio(r.get(f"{c}_ratio")) for c in columns[1:]]
        cells += [_ratio(r.get("control_ratio"))] if control else []
        cells += [r["target"], f"**{r['status']}**"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def document(title: str, command: str, results: Mapping[str, Any], body: str, method: Sequence[str],
             extra: Sequence[str] = ()) -> str:
    """A results page: what generated it, the machine, the table (``body``), the rows' notes, the method."""
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)
    rows = results.get("rows") or results.get("summary") or []
    out = [
        f"# {title}", "",
        f"Generated {results['generated']} by `{command}` ({results.get('mode', 'full')} run, "
        f"{results.get('duration_s', 0):.0f} s).", "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, {m['memory_gib']} GiB; Python {m['python']}, "
        f"torch {m['torch']}, plait {m['plait']}, accelerate {m['accelerate']}"
        f"{', ' + versions if versions else ''}; {m['platform']}.", "",
        body, "",
    ]
    notes = [f"- {r['benchmark']}, {r['measurement']}: {r['note']}" for r in rows if r.get("note")]
    if notes:
        out += [f"Notes (every sample is in {results.get('suite', 'the')}.json):", "", *notes, ""]
    out += ["How it is measured:", "", *[f"- {line}" for line in method]]
    if extra:
        out += ["", *extra]
    return "\n".join(out) + "\n"


def write_results(results_dir: Path, name: str, results: Mapping[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` (every number and sample) and ``<name>.md`` (the page), each atomically."""
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = (results_dir / f"{name}.json", results_dir / f"{name}.md")
    for path, text in zip(paths, (json.dumps(results, indent=1) + "\n", markdown)):
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    return paths


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- machine facts
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(versions: Sequence[str] = ()) -> dict[str, Any]:
    """Cores, CPU, OS, Python and the versions of every library compared (read from metadata:
    this process imports none of them); ``versions`` names more distributions to report."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "cpu": _cpu_model(), "logical_cores": os.cpu_count(), "usable_cores": usable, "memory_gib": _memory_gib(),
        "platform": platform.platform(), "python": platform.python_version(),
    }
    info.update({name: _version(name) for name in ("torch", "plait", "accelerate", "safetensors", "numpy")})
    if versions:
        info["versions"] = {name: _version(name) for name in versions}
    return info


# ---------------------------------------------------------------------------- environment
class Sandbox:
    """A temporary home for one run: empty config directories (no user's plait, Accelerate or DeepSpeed
    config can change what is measured) and scratch space on the same filesystem."""

    DROPPED = ("PLAIT_", "ACCELERATE_", "DS_")

    def __init__(self, base: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="plait-bench-", dir=base))
        for sub in ("config", "hf", "scratch"):
            (self.root / sub).mkdir()

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    def enter(self) -> None:
        """Make this process's environment the sandbox's (before any worker starts: the
        fork server and so every worker inherit it)."""
        for name in [k for k in os.environ if k.startswith(self.DROPPED)]:
            del os.environ[name]
        os.environ.update(self.env())

    def env(self, threads: int | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(self.DROPPED)}
        env["XDG_CONFIG_HOME"] = str(self.root / "config")
        env["HF_HOME"] = str(self.root / "hf")
        env["PYTHONUNBUFFERED"] = "1"
        if threads is not None:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(threads)
        env.update(extra or {})
        return env

    def launch_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a launched (torchrun) job: one thread per process, bytecode as installed."""
        env = self.env(threads=1, extra=extra)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------- launching
def torchrun(script: Path, args: Sequence[str], env: Mapping[str, str], timeout: float = 1800) -> None:
    """Run ``script`` on 2 processes under ``python -m torch.distributed.run --standalone``; raise with its
    output if it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "--monitor-interval=0.1", str(script), *args]
    result = subprocess.run(command, env=dict(env), capture_output=True, text=True, timeout=timeout, cwd=HERE)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def run_suite(argv: Sequence[str] | None, *, name: str, doc: str, measure: Callable[[Sandbox, bool], dict[str, Any]],
              page: Callable[[dict[str, Any]], str], versions: Sequence[str] = ()) -> int:
    """The ``main`` of a suite: parse ``--quick``/``--results-dir``/``--tmpdir``, run ``measure(sandbox, quick)``
    (an entry with ``rows``, ``results``, ``settings``) in a fresh sandbox, and write ``results/<name>.json`` and
    ``.md`` (``page(results)``); the table is printed."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--results-dir", type=Path, default=RESULTS, help=f"where {name}.json and {name}.md go")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: the system's temp dir)")
    args = parser.parse_args(argv)
    sandbox = Sandbox(args.tmpdir)
    sandbox.enter()
    started = time.perf_counter()
    try:
        entry = measure(sandbox, args.quick)
    finally:
        sandbox.close()
    results: dict[str, Any] = {
        "suite": name,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.perf_counter() - started, 1),
        "mode": "quick" if args.quick else "full",
        "machine": machine_info(versions),
        **entry,
    }
    markdown = page(results)
    json_path, md_path = write_results(args.results_dir, name, results, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path} in {results['duration_s']:.0f} s", file=sys.stderr)
    return 0
