"""Benchmarks of issue "core": plait against raw PyTorch and HF Accelerate, side by side in one run.

- ``step_overhead``: time per step of a prepared training loop, as a ratio over raw PyTorch (``suite_step.py``).
- ``startup``: what ``import plait; plait.Accelerator`` adds to ``import torch``.
- ``checkpoint``: ``save_state`` / ``load_state`` throughput of a ~100M-parameter model with AdamW state.

Each benchmark returns an entry ``{"mode", "settings", "results", "rows"}``; ``rows``
are the summary table's lines (``_common.row``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import _startup_instructions
from _common import CONTENDERS, CONTROL, Sandbox, Worker, compare_sets, judge, log, median, quartiles, rotated, row
from suite_step import STEP_TARGETS, step_overhead

TARGETS = {
    **STEP_TARGETS,
    "startup_ms": 30.0,
    "save_ratio": 0.8,
    #: load_state with every check against raw load_file + torch.load (issue 14: >= 0.9x).
    "load_ratio": 0.9,
}


def start_all(target: str, args_for: Callable[[str], Sequence[str]]) -> dict[str, Worker]:
    """Start one fresh worker per contender (set-up in parallel) and wait until each is ready."""
    workers = {c: Worker(target, args_for(c)) for c in CONTENDERS}
    try:
        for worker in workers.values():
            worker.start()
    except BaseException:
        for worker in workers.values():
            worker.close()
        raise
    return workers


# ============================================================================ 2. start-up
STARTUP_IMPORTS = _startup_instructions.IMPORTS
STARTUP_SNIPPET = (
    "import time; _t0 = time.perf_counter(); import torch; _t1 = time.perf_counter(); {imports}; "
    "_t2 = time.perf_counter(); print('@@bench', _t1 - _t0, _t2 - _t1)"
)


def _python_c(code: str, env: dict[str, str]) -> tuple[float, float, float]:
    """Wall time of a fresh ``python -c code``, and its own timings of ``import torch`` and of what follows."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed:\n{done.stderr[-3000:]}")
    line = next(li for li in done.stdout.splitlines() if li.startswith("@@bench"))
    _, torch_s, added_s = line.split()
    return wall, float(torch_s), float(added_s)


def _importtime(env: dict[str, str], runs: int) -> list[dict[str, Any]]:
    """plait's heaviest imports: every module imported after torch by ``import plait.accelerator``
    (what ``plait.Accelerator`` imports), by self time (the least of ``runs`` runs)."""
    best: dict[str, tuple[int, int]] = {}
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import torch; import plait; import plait.accelerator"],
            env=env, capture_output=True, text=True, check=True,
        )
        lines = [li for li in done.stderr.splitlines() if li.startswith("import time:") and "|" in li]
        top_torch = max(i for i, li in enumerate(lines) if li.split("|")[2].strip() == "torch"
                        and not li.split("|")[2].startswith("  "))
        for li in lines[top_torch + 1:]:
            self_us, cumulative_us, name = li[len("import time:"):].split("|")
            name = name.strip()
            previous = best.get(name)
            current = (int(self_us), int(cumulative_us))
            best[name] = current if previous is None else (min(previous[0], current[0]), min(previous[1], current[1]))
    ranked = sorted(best.items(), key=lambda kv: kv[1][0], reverse=True)
    return [{"module": n, "self_ms": s / 1000, "cumulative_ms": c / 1000} for n, (s, c) in ranked]


def _import_instructions(sandbox: Sandbox, env: dict[str, str]) -> dict[str, int] | None:
    """Instructions each contender's imports execute after ``import torch`` (callgrind, both at once);
    ``None`` where valgrind is not installed."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        log("startup instructions: valgrind is not installed, skipped")
        return None
    log("startup: instructions of the imports under callgrind (about 2 minutes)")
    running = []
    for contender in ("plait", "accelerate"):
        prefix = sandbox.scratch / f"callgrind-startup-{contender}"
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p", sys.executable,
                   str(Path(_startup_instructions.__file__)), contender]
        process = subprocess.Popen(command, env={**env, "PYTHONHASHSEED": "0"}, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        running.append((contender, prefix, process))
    counts: dict[str, int] = {}
    for contender, prefix, process in running:
        _, err = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"callgrind run of the {contender} imports failed:\n{err[-3000:]}")
        dump = next(prefix.parent.glob(prefix.name + ".*.1"))
        summary = next(line for line in dump.read_text().splitlines() if line.startswith("summary:"))
        counts[contender] = int(summary.split()[1])
        for f in prefix.parent.glob(prefix.name + ".*"):
            f.unlink()
    return counts


def startup(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    """Fresh ``python -c`` processes, interleaved (torch / plait / accelerate, rotating), median of many.

    Every command runs with the same bytecode cache (``PYTHONPYCACHEPREFIX`` in the
    sandbox, warmed first), as after a regular ``pip install`` that compiles ``.pyc``
    files: an editable install under ``PYTHONDONTWRITEBYTECODE=1`` has none for plait
    and would compile its sources on every start, which the info row measures.
    """
    repeats = 3 if quick else 12
    cached_env = sandbox.env(extra={"PYTHONPYCACHEPREFIX": str(sandbox.root / "pycache")})
    cached_env.pop("PYTHONDONTWRITEBYTECODE", None)
    codes = {c: STARTUP_SNIPPET.format(imports=STARTUP_IMPORTS[c]) for c in CONTENDERS}
    log("startup: warming the bytecode cache")
    for code in codes.values():
        for _ in range(1 if quick else 2):
            _python_c(code, cached_env)
    wall: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    torch_s: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    added: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    log(f"startup: {repeats} interleaved rounds")
    for r in range(repeats):
        for c in rotated(CONTENDERS, r):
            w, t, a = _python_c(codes[c], cached_env)
            wall[c].append(w)
            torch_s[c].append(t)
            added[c].append(a)
    # The environment as it is, without bytecode written (an editable plait then has no .pyc).
    plain_env = sandbox.env(extra={"PYTHONDONTWRITEBYTECODE": "1"})
    plain_env.pop("PYTHONPYCACHEPREFIX", None)
    plain_repeats = 1 if quick else 5
    no_cache: dict[str, list[float]] = {"plait": [], "accelerate": []}
    for r in range(plain_repeats):
        for c in rotated(("plait", "accelerate"), r):
            no_cache[c].append(_python_c(codes[c], plain_env)[2])
    log("startup: without bytecode cache, and -X importtime")
    imports = _importtime(cached_env, 1 if quick else 3)
    instructions = None if quick else _import_instructions(sandbox, cached_env)

    wall_ms = {c: median(wall[c]) * 1e3 for c in CONTENDERS}
    wall_iqr = {c: [v * 1e3 for v in quartiles(wall[c])] for c in CONTENDERS}
    added_ms = {c: median(added[c]) * 1e3 for c in CONTENDERS}
    wall_added_ms = {c: wall_ms[c] - wall_ms["raw"] for c in ("plait", "accelerate")}
    no_cache_ms = {c: median(v) * 1e3 for c, v in no_cache.items()}

    target = TARGETS["startup_ms"]
    over = added_ms["plait"] > target
    plait_pycache = _has_pycache("plait")
    results = {
        "repeats": repeats,
        "wall_ms": wall_ms,
        "wall_iqr_ms": wall_iqr,
        "wall_added_ms": wall_added_ms,
        "import_torch_ms": median(torch_s["raw"]) * 1e3,
        "added_in_process_ms": added_ms,
        "added_in_process_iqr_ms": {c: [v * 1e3 for v in quartiles(added[c])] for c in ("plait", "accelerate")},
        "added_without_bytecode_cache_ms": no_cache_ms,
        "plait_has_pycache_in_source_tree": plait_pycache,
        "plait_heaviest_imports": imports[:15],
        "importtime_total_self_ms": sum(i["self_ms"] for i in imports),
        "import_instructions": instructions,
    }
    rows = [
        row("startup", "import plait; plait.Accelerator, added to import torch (in-process, median)", "ms",
            {"raw": results["import_torch_ms"], "plait": added_ms["plait"], "accelerate": added_ms["accelerate"]},
            None, f"<= {target:.0f} ms", "FAIL" if over else "PASS",
            "raw column: import torch itself"),
        row("startup", "same, as wall time of fresh `python -c` (median difference)", "ms",
            {"raw": wall_ms["raw"], "plait": wall_added_ms["plait"], "accelerate": wall_added_ms["accelerate"]},
            None, f"<= {target:.0f} ms", "info",
            f"raw column: python -c 'import torch' (IQR {wall_iqr['raw'][0]:.0f}-{wall_iqr['raw'][1]:.0f} ms)"),
        row("startup", "added to import torch with no bytecode cache (PYTHONDONTWRITEBYTECODE=1)", "ms",
            {"plait": no_cache_ms["plait"], "accelerate": no_cache_ms["accelerate"]},
            None, "-", "info",
            "no __pycache__ in plait's source tree: it compiles its sources on every start" if not plait_pycache else "plait's source tree has a __pycache__ (used when up to date)"),
    ]
    if instructions is not None:
        rows.append(row(
            "startup", "instructions the imports execute after import torch (callgrind, bytecode cached)", "instr",
            {"plait": instructions["plait"], "accelerate": instructions["accelerate"]}, None, "-", "info",
            "the steady figure behind the time rows, which vary with the machine's load",
        ))
    return {
        "mode": "quick" if quick else "full",
        "settings": {
            "commands": codes,
            "bytecode": "shared PYTHONPYCACHEPREFIX, warmed (2 runs of each command) before timing",
            "verdict_on": "in-process time of the imports after torch (fresh process each); the wall-time "
                          "difference is shown too but the noise of `import torch` alone dwarfs 30 ms",
        },
        "results": results,
        "rows": rows,
    }


def _has_pycache(package: str) -> bool:
    from importlib.util import find_spec

    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return False
    return any((Path(p) / "__pycache__").is_dir() for p in spec.submodule_search_locations)


# ============================================================================ 3. checkpoints
def _evict(directory: Path) -> None:
    """Drop ``directory``'s (clean, already synced) pages from the page cache."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def checkpoint(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    """save_state by each contender in its own worker; load_state as a resume: in a fresh process.

    Saves, each trial, for each contender in rotating order: ``sync`` (nothing of an earlier
    save still in flight), save into a fresh directory (timed), ``sync`` (timed apart: the
    durable variant), delete. A first trial, not counted, warms each worker up (the very first
    save of a process pays first-touch page faults that later ones do not).

    Loads are what a restarted job does: a fresh worker builds the model and its AdamW state
    (one step) and loads the contender's checkpoint once (timed), with the files in the page
    cache (warm) or dropped from it with ``posix_fadvise(DONTNEED)`` (cold, every other trial).
    raw loads raw's files twice per trial, as two contenders: the second (``raw_control``) is
    the A/A control. A fresh process per load keeps the comparison free of what a process
    that loaded before holds: plait's optimizer state stays a copy-on-write view of the file
    it was loaded from, and such pages can neither be dropped from the cache nor unmapped for free.
    """
    width, layers = (1024, 10) if quick else (2048, 24)
    trials = 1 if quick else 9
    log(f"checkpoint: starting workers ({layers} x Linear({width}, {width}) + AdamW each)")
    workers = start_all("_checkpoint_worker:main", lambda c: (c, str(width), str(layers)))
    parameters = workers["raw"].ready["parameters"]
    kinds = ("save", "save_sync")
    seconds: dict[str, dict[str, list[float]]] = {k: {c: [] for c in CONTENDERS} for k in kinds}
    written: dict[str, list[int]] = {c: [] for c in CONTENDERS}
    files: dict[str, int] = {}
    resume = {c: sandbox.scratch / f"resume-{c}" for c in CONTENDERS}
    try:
        for t in range(-1, trials):
            log(f"checkpoint: trial {t + 1}/{trials}" + (" (warm-up, not counted)" if t < 0 else ""))
            for c in rotated(CONTENDERS, t):
                # One checkpoint on disk at a time: on a VM, a save that grows the page cache into
                # memory not used before is several times slower than one that reuses freed pages.
                directory = sandbox.scratch / f"{c}-{t + 1}"
                os.sync()
                saved = workers[c].ask(op="save", path=str(directory))
                start = time.perf_counter()
                os.sync()
                synced = time.perf_counter() - start
                shutil.rmtree(directory)
                os.sync()
                if t < 0:
                    continue
                seconds["save"][c].append(saved["seconds"])
                seconds["save_sync"][c].append(saved["seconds"] + synced)
                written[c].append(saved["bytes"])
                files[c] = saved["files"]
        sizes = {c: workers[c].ask(op="save", path=str(resume[c]))["bytes"] for c in CONTENDERS}
        os.sync()
    finally:
        for worker in workers.values():
            worker.close()
    loads = _resumes(resume, width, layers, trials)
    for directory in resume.values():
        shutil.rmtree(directory)

    def throughput(kind: str, c: str) -> list[float]:
        return [b / s / 1e9 for b, s in zip(written[c], seconds[kind][c])]

    # Ratios of medians: the noise of one save is independent of the next one's (pairing them
    # would add two noises), and a median over trials drops the saves a burst of load hit.
    gbps = {k: {c: median(throughput(k, c)) for c in CONTENDERS} for k in kinds}
    best = {k: {c: max(throughput(k, c)) for c in CONTENDERS} for k in kinds}
    ratios = {k: {c: gbps[k][c] / gbps[k]["raw"] for c in ("plait", "accelerate")} for k in kinds}
    results = {
        "parameters": parameters,
        "model": f"{layers} x Linear({width}, {width}), fp32, AdamW after one step",
        "trials": trials,
        "bytes": {c: median(written[c]) for c in CONTENDERS},
        "files": files,
        "seconds": {k: {c: median(v) for c, v in per.items()} for k, per in seconds.items()},
        "samples_s": {k: {c: [round(x, 4) for x in v] for c, v in per.items()} for k, per in seconds.items()},
        "gb_per_s": gbps,
        "ratio": ratios,
        "best_gb_per_s": best,
        "best_ratio": {k: {c: best[k][c] / best[k]["raw"] for c in ("plait", "accelerate")} for k in kinds},
        "resume_bytes": sizes,
        "resume_s": loads,
    }
    target = TARGETS["save_ratio"]
    labels = {
        "save": "save_state throughput (bytes written / s, checksums included)",
        "save_sync": "save_state + sync (durable) throughput",
    }
    size = f"{parameters / 1e6:.1f}M params, {results['bytes']['raw'] / 1e9:.2f} GB"
    rows = []
    n = len(seconds["save"]["raw"])
    for k in kinds:
        is_target = k == "save"
        status = ("PASS" if ratios[k]["plait"] >= target else "FAIL") if is_target else "info"
        rows.append(row(
            "checkpoint", f"{labels[k]}, median of {n}, {size}",
            "GB/s", gbps[k], ratios[k], f">= {target:.1f}x raw" if is_target else "-", status,
            f"median s: raw {results['seconds'][k]['raw']:.3f}, plait {results['seconds'][k]['plait']:.3f}, "
            f"accelerate {results['seconds'][k]['accelerate']:.3f}",
        ))
        if is_target:
            # Load on a shared VM only ever adds time (raw and Accelerate do the very same writes, yet
            # their medians can differ by 2x): the fastest of the trials is the steadier estimate.
            rows.append(row(
                "checkpoint", f"{labels[k]}, best of {n}, {size}", "GB/s", best[k], results["best_ratio"][k],
                f">= {target:.1f}x raw", "PASS" if results["best_ratio"][k]["plait"] >= target else "FAIL",
                "fastest save of each contender: the noise of the machine only adds time",
            ))
    for kind, label in (("warm", "files in page cache"), ("cold", "files evicted from page cache")):
        rows.append(_resume_row(loads[kind], sizes, f"load_state in a fresh process (a resume), {label}, "
                                f"every check included", size, judged=kind == "warm"))
    return {
        "mode": "quick" if quick else "full",
        "settings": {
            "filesystem": str(sandbox.scratch),
            "raw_save": "safetensors.torch.save_file(model.state_dict()) + torch.save(optimizer.state_dict())",
            "raw_load": "load_file + model.load_state_dict, torch.load(weights_only=True) + optimizer.load_state_dict",
            "page_cache": "os.sync() before each save; loads in a fresh worker each: warm with the files in the "
                          "page cache, cold after posix_fadvise(DONTNEED) of every file",
        },
        "results": results,
        "rows": rows,
    }


RESUMERS = (*CONTENDERS, CONTROL)


def _resumes(directories: dict[str, Path], width: int, layers: int, trials: int) -> dict[str, dict[str, list[float]]]:
    """Each contender's load_state of its checkpoint in fresh workers, in rotating order: every trial warm, every
    other one cold too; ``raw_control`` loads raw's files (the A/A control)."""
    loads: dict[str, dict[str, list[float]]] = {k: {c: [] for c in RESUMERS} for k in ("warm", "cold")}
    for t in range(trials):
        for kind in ("warm", "cold") if t % 2 == 0 else ("warm",):
            for c in rotated(RESUMERS, t):
                source = "raw" if c == CONTROL else c
                log(f"checkpoint: resume {t + 1}/{trials}, {kind}, {c}")
                worker = Worker("_checkpoint_worker:main", (source, str(width), str(layers)))
                try:
                    worker.start()
                    if kind == "cold":
                        _evict(directories[source])
                    loads[kind][c].append(worker.ask(op="load", path=str(directories[source]))["seconds"])
                finally:
                    worker.close()
    return loads


def _resume_row(loads: dict[str, list[float]], sizes: dict[str, int], label: str, size: str,
                judged: bool) -> dict[str, Any]:
    """A load row: each contender's throughput (its checkpoint's bytes / s), median over trials; the ratios are
    medians of each trial's paired ratio over raw; judged against the load target when ``judged``."""
    rounds = [{c: [sizes["raw" if c == CONTROL else c] / loads[c][i] / 1e9] for c in RESUMERS}
              for i in range(len(loads["raw"]))]
    compared = compare_sets(rounds)
    ratio, control = compared["ratio"]["plait"], compared["ratio"][CONTROL]
    target = TARGETS["load_ratio"]
    status, why = "info", ""
    if judged:
        status, why = judge(ratio, target, control=control, per_set=compared["ratio_per_set"]["plait"],
                            higher_is_better=True)
    values = {c: compared["value"][c] for c in CONTENDERS}
    ratios = {c: compared["ratio"][c] for c in ("plait", "accelerate")}
    note = (f"A/A control (raw again / raw) {control:.3f}x; median s: "
            + ", ".join(f"{c} {median(loads[c]):.3f}" for c in CONTENDERS))
    return row("checkpoint", f"{label}, median of {len(rounds)}, {size}", "GB/s", values, ratios,
               f">= {target:.1f}x raw" if judged else "-", status, f"{why}; {note}" if why else note)


BENCHMARKS: dict[str, Callable[[Sandbox, bool], dict[str, Any]]] = {
    "step_overhead": step_overhead,
    "startup": startup,
    "checkpoint": checkpoint,
}


def heaviest_imports_over_target(entry: dict[str, Any]) -> list[dict[str, Any]] | None:
    """plait's heaviest imports (every module it pulls in after torch), when its start-up misses the target."""
    results = entry.get("results", {})
    if results.get("added_in_process_ms", {}).get("plait", 0.0) > TARGETS["startup_ms"]:
        return list(results.get("plait_heaviest_imports", []))[:10]
    return None
