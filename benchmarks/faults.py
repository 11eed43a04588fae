"""Faults: ``kill -9`` at random moments of a process that saves checkpoints, and what a fresh process loads after.

    python benchmarks/faults.py               # 100 kills: about 6 minutes on 2 cores (8 on busy ones)
    python benchmarks/faults.py --trials 3    # a smoke run (about 25 s); --quick is --trials 5

A trial starts a fresh saver (``_fault_worker.py``: an ``Accelerator`` with
``ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=2)`` saving a 1.05M-parameter
model, AdamW and a scheduler in a loop, save ``n``'s state a function of ``n``) in a project
directory of its own, waits for its first save to complete, and SIGKILLs it at a moment drawn
uniformly from a window that covers several saves and rotations. The folder is inspected (where the
kill landed; every visible ``checkpoint_<n>`` has its manifest and every file it lists, at its size),
then a fresh process calls ``load_state()``, which must load the newest complete checkpoint, holding
exactly save ``n``'s parameters, optimizer and scheduler state (recomputed with plain PyTorch), and
no older than the last save the saver reported complete; every other visible checkpoint must hold
its save's state; the next ``save_state()`` must succeed, leave only the two newest checkpoints and
no leftovers, and load back exactly.

Outcomes: loaded exactly; refused (a ``CheckpointError``: acceptable only when no complete checkpoint
can exist yet, so 0 here, since every kill comes after the first save); wrong; crashed. Target: every
kill loaded exactly (0 refused, 0 wrong, 0 crashed), no visible checkpoint incomplete, every post-kill
save good. Writes ``benchmarks/results/faults.json`` and ``benchmarks/results/faults.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import HERE, Sandbox, Worker, WorkerError, document, log, machine_info, write_results

WORKER = HERE / "_fault_worker.py"
DEFAULT_TRIALS = 100
QUICK_TRIALS = 5
#: The kill window, in median save cycles (train_step + save_state) measured before the trials.
WINDOW_SAVES = 8
#: A saver whose first save has not completed by then, or a check that has not answered, is a failure.
LIMIT_S = 120
MANIFEST = "plait_checkpoint.json"
TMP_MARK, OLD_MARK, DELETE_MARK = ".plait-tmp-", ".plait-old-", ".plait-deleting-"
OUTCOMES = ("loaded", "refused", "wrong", "crashed")
LANDINGS = {
    "writing": "inside a save: its temporary directory present, no manifest yet",
    "committing": "inside a save: the temporary directory complete (manifest written), not yet renamed",
    "rotation pending": "inside rotation: the new checkpoint in place, 3 complete ones visible (flushing the newest "
                        "before the oldest goes)",
    "rotation deleting": f"inside rotation: a `{DELETE_MARK}` directory present (the oldest renamed, being deleted)",
    "replacing": f"an `{OLD_MARK}` directory present (a replaced checkpoint being deleted)",
    "between saves": "none of these: between saves (train_step), or in a rename or flush that leaves no trace",
}
METHOD = [
    "Every trial is a fresh saver process, `python benchmarks/_fault_worker.py PROJECT --wait-for-go` (one thread, "
    "an empty config home), in a project directory of its own, and a fresh checking process forked from a fork "
    "server that has imported torch and nothing else (`_workers.py`). A saver starts up (imports, builds, prepares) "
    "while the trial before it is checked, and is told to start saving only once that check has ended: nothing else "
    "of the benchmark runs while it saves and is killed.",
    "Save `n` is `train_step(n)` (parameters and gradients from a generator seeded with `n`, AdamW's state cleared, "
    "one AdamW step, one StepLR step) then `save_state()`; so `checkpoint_<n>` must hold exactly what plain PyTorch "
    "objects hold after `n` scheduler steps and `train_step(n)`, computed in the checking process without plait and "
    "compared tensor for tensor (`torch.equal`, same dtype and shape) and entry for entry.",
    "Before the trials, an uncounted saver runs 12 saves: the median save cycle sets the kill window "
    f"({WINDOW_SAVES} cycles). A trial waits until the saver reports its first save complete, sleeps a delay drawn "
    "uniformly from the window (`random.Random(seed)`), and sends SIGKILL; the saver reports each save after "
    "`save_state()` returns, so the loaded checkpoint must be the last reported or the one after.",
    "Where the kill landed is read from the folder right after the saver is reaped, before anything else touches it.",
    "The checking process: `load_state()` (no argument) must load the newest complete `checkpoint_<n>` with save n's "
    "exact state; each other visible checkpoint is loaded by path and compared too; then `train_step(n + 1)` and "
    "`save_state()`, which must write `checkpoint_<n+1>`, leave `checkpoint_<n>` and `checkpoint_<n+1>` and no hidden "
    "entry, and load back exactly.",
]


# ---------------------------------------------------------------------------- the saver
class Saver:
    """One saver process; its report lines (``saved <n> <start> <end>``) go to a file polled here."""

    def __init__(self, project: Path, env: dict[str, str], saves: int | None = None) -> None:
        self.project = project
        self.lines = project.parent / f"{project.name}.lines"
        self.errors = project.parent / f"{project.name}.stderr"
        command = [sys.executable, str(WORKER), str(project), "--wait-for-go",
                   *([] if saves is None else ["--saves", str(saves)])]
        with open(self.lines, "w") as out, open(self.errors, "w") as err:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env, cwd=HERE,
                                            text=True)
        self.went = 0.0

    def go(self) -> None:
        """Let it start saving (it may still be starting up: then it starts saving as soon as it is set up)."""
        assert self.process.stdin is not None
        self.went = time.time()
        self.process.stdin.write("go\n")
        self.process.stdin.close()

    def saves(self) -> list[tuple[int, float, float]]:
        """The saves reported complete so far: (n, start, end) in ``time.time()``."""
        found = []
        for line in self.lines.read_text().split("\n")[:-1]:  # whole lines only: the last may be half written
            parts = line.split()
            if len(parts) == 4 and parts[0] == "saved":
                found.append((int(parts[1]), float(parts[2]), float(parts[3])))
        return found

    def wait_for(self, count: int) -> float:
        """Wait until ``count`` saves are reported; the time (``time.time()``) they were seen."""
        deadline = time.monotonic() + LIMIT_S
        while len(self.saves()) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the saver reported {len(self.saves())} saves of {count} (exit code "
                                   f"{self.process.returncode}):\n{self.errors.read_text(errors='replace')[-4000:]}")
            time.sleep(0.002)
        return time.time()

    def kill(self) -> float:
        """SIGKILL it and reap it; the time the signal was sent."""
        sent = time.time()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return sent

    def remove(self) -> None:
        self.lines.unlink(missing_ok=True)
        self.errors.unlink(missing_ok=True)


def calibrate(sandbox: Sandbox, env: dict[str, str]) -> dict[str, Any]:
    """An uncounted saver's 12 saves: the median save_state time and save cycle (the first save is left out)."""
    project = sandbox.scratch / "calibration"
    saver = Saver(project, env, saves=12)
    saver.go()
    saver.wait_for(12)
    saver.process.wait()
    saves = saver.saves()
    saver.remove()
    shutil.rmtree(project, ignore_errors=True)
    durations = [end - start for _, start, end in saves[1:]]
    cycles = [b[2] - a[2] for a, b in itertools.pairwise(saves[1:])]
    return {"save_state_s": round(statistics.median(durations), 4), "cycle_s": round(statistics.median(cycles), 4),
            "save_state_samples_s": [round(d, 4) for d in durations], "cycle_samples_s": [round(c, 4) for c in cycles]}


# ---------------------------------------------------------------------------- inspecting the folder
def inspect(folder: Path) -> dict[str, Any]:
    """What the kill left in ``folder``, read before anything else touches it: the entries, the complete visible
    checkpoints, the incomplete visible ones (no manifest, or a listed file missing or of another size), and where
    the kill landed."""
    entries = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    complete, incomplete = [], []
    for name in entries:
        if not name.startswith("checkpoint_"):
            continue
        directory = folder / name
        manifest = directory / MANIFEST
        if not manifest.is_file():
            incomplete.append(f"{name}: no {MANIFEST}")
            continue
        try:
            files = dict(json.loads(manifest.read_text(encoding="utf-8"))["files"])
        except (ValueError, KeyError, TypeError) as exc:
            incomplete.append(f"{name}: {MANIFEST} unreadable ({exc})")
            continue
        bad = [f for f, entry in files.items()
               if not (directory / f).is_file() or (directory / f).stat().st_size != entry["size"]]
        if bad:
            incomplete.append(f"{name}: listed files missing or truncated: {bad}")
        else:
            complete.append(int(name.split("_")[-1]))
    temporaries = [n for n in entries if TMP_MARK in n]
    if any(DELETE_MARK in n for n in entries):
        landing = "rotation deleting"
    elif any(OLD_MARK in n for n in entries):
        landing = "replacing"
    elif temporaries:
        landing = "committing" if all((folder / n / MANIFEST).is_file() for n in temporaries) else "writing"
    elif len(complete) > 2:
        landing = "rotation pending"
    else:
        landing = "between saves"
    return {"entries": entries, "complete": sorted(complete), "incomplete": incomplete, "landing": landing}


# ---------------------------------------------------------------------------- one trial
def _check(project: Path, reported: int) -> dict[str, Any]:
    """The checking process's answer (``_fault_worker.check``), or a crash if it died or did not answer in time."""
    worker = Worker("_fault_worker:check", (str(project), str(reported)))
    timer = threading.Timer(LIMIT_S, worker.proc.kill)
    timer.start()
    try:
        return worker.start()
    except WorkerError as exc:
        return {"outcome": "crashed", "reason": str(exc)[-2000:], "problems": [], "others_wrong": [],
                "next_save": "not tried", "loaded": None}
    finally:
        timer.cancel()
        worker.close()


def trial(index: int, saver: Saver, delay: float, start_next: Callable[[], None]) -> dict[str, Any]:
    """Kill ``saver`` ``delay`` seconds after its first save, inspect its folder, call ``start_next`` (the next
    trial's saver starts up while this one is checked), check."""
    project = saver.project
    try:
        saver.go()
        first_seen = saver.wait_for(1)
        time.sleep(max(0.0, first_seen + delay - time.time()))
        killed_at = saver.kill()
        saves = saver.saves()
    finally:
        saver.kill()
        saver.remove()
    folder = inspect(project / "checkpoints")
    start_next()
    reported = saves[-1][0] if saves else -1
    checking = time.perf_counter()
    answer = _check(project, reported)
    check_s = time.perf_counter() - checking
    shutil.rmtree(project, ignore_errors=True)
    since = killed_at - saves[-1][2] if saves else None
    return {"trial": index, "delay_s": round(delay, 4), "saves_reported": len(saves), "reported": reported,
            "since_last_reported_s": None if since is None else round(since, 4),
            "go_to_first_save_s": round(first_seen - saver.went, 3), "check_s": round(check_s, 3), **folder,
            **{k: answer.get(k) for k in ("outcome", "loaded", "problems", "others_wrong", "next_save", "reason",
                                           "load_s")}}


# ---------------------------------------------------------------------------- the campaign
def measure(sandbox: Sandbox, trials: int, window: float | None, seed: int) -> dict[str, Any]:
    env = sandbox.env(threads=1)
    log("faults: calibration (an uncounted saver, 12 saves)")
    calibration = calibrate(sandbox, env)
    window_s = window if window is not None else WINDOW_SAVES * calibration["cycle_s"]
    log(f"faults: save_state {calibration['save_state_s'] * 1e3:.0f} ms, cycle {calibration['cycle_s'] * 1e3:.0f} ms;"
        f" kill window {window_s * 1e3:.0f} ms after the first save")
    draws = random.Random(seed)
    results: list[dict[str, Any]] = []
    savers = [Saver(sandbox.scratch / "trial-0", env)]

    def start_next() -> None:
        if len(savers) < trials:
            savers.append(Saver(sandbox.scratch / f"trial-{len(savers)}", env))

    try:
        for i in range(trials):
            results.append(trial(i, savers[i], draws.uniform(0.0, window_s), start_next))
            _log_trial(results[-1], trials)
    finally:
        for saver in savers:
            saver.kill()
            saver.remove()
    outcomes = Counter(r["outcome"] for r in results)
    landings = Counter(r["landing"] for r in results)
    counts = {
        **{k: outcomes.get(k, 0) for k in OUTCOMES},
        "next_save_good": sum(r["next_save"] == "ok" for r in results),
        "visible_incomplete": sum(bool(r["incomplete"]) for r in results),
        "others_wrong": sum(bool(r["others_wrong"]) for r in results),
    }
    rows = _rows(trials, counts, results)
    return {
        "settings": {"trials": trials, "seed": seed, "window_s": round(window_s, 4),
                     "window": "given" if window is not None else f"{WINDOW_SAVES} median save cycles",
                     "saver": f"python benchmarks/{WORKER.name} PROJECT", "total_limit": 2,
                     "model": "4 x Linear(512, 512), 1.05M float32 parameters; AdamW; StepLR",
                     "checkpoint_bytes": "about 12.6 MB"},
        "targets": {"loaded": f"{trials} of {trials}", "refused": 0, "wrong": 0, "crashed": 0,
                    "visible_incomplete": 0, "others_wrong": 0, "next_save_good": f"{trials} of {trials}"},
        "verdict": "PASS" if all(r["status"] == "PASS" for r in rows) else "FAIL",
        "results": {"calibration": calibration, "counts": counts,
                    "landings": {k: landings.get(k, 0) for k in LANDINGS},
                    "outcomes_by_landing": {k: dict(Counter(r["outcome"] for r in results if r["landing"] == k))
                                            for k in LANDINGS if landings.get(k)},
                    "trials": results},
        "rows": rows,
    }


def _log_trial(r: dict[str, Any], trials: int) -> None:
    log(f"faults: kill {r['trial'] + 1}/{trials} after {r['delay_s'] * 1e3:.0f} ms ({r['saves_reported']} saves, "
        f"{r['landing']}): {r['outcome']} checkpoint_{r['loaded']}, next save {r['next_save']}")


def _rows(trials: int, counts: dict[str, int], results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def line(measurement: str, value: int, target: int, note: Callable[[dict[str, Any]], str] | None = None,
             ) -> dict[str, Any]:
        shown = [note(r) for r in results if note is not None and note(r)]
        return {"benchmark": "kill -9", "measurement": measurement, "unit": "kills", "value": value,
                "target": f"{target} of {trials}" if target else "0", "status": "PASS" if value == target else "FAIL",
                "note": "; ".join(shown[:3])}

    def problem(r: dict[str, Any]) -> str:
        text = "; ".join(r["problems"]) or r.get("reason") or ""
        return f"trial {r['trial']}: {text}" if text else ""

    return [
        line("`load_state()` loaded the newest complete checkpoint, exactly its save's state", counts["loaded"], trials),
        line("refused with a `CheckpointError` (after the first save: must not happen)", counts["refused"], 0,
             lambda r: problem(r) if r["outcome"] == "refused" else ""),
        line("wrong checkpoint or state loaded", counts["wrong"], 0, lambda r: problem(r) if r["outcome"] == "wrong" else ""),
        line("crashed", counts["crashed"], 0, lambda r: problem(r) if r["outcome"] == "crashed" else ""),
        line("a visible `checkpoint_<n>` lacking its manifest or a file it lists", counts["visible_incomplete"], 0,
             lambda r: f"trial {r['trial']}: {r['incomplete']}" if r["incomplete"] else ""),
        line("another visible checkpoint not holding its save's state", counts["others_wrong"], 0,
             lambda r: f"trial {r['trial']}: {r['others_wrong']}" if r["others_wrong"] else ""),
        line("the next `save_state()` succeeded, left 2 checkpoints and no leftovers, and loads back exactly",
             counts["next_save_good"], trials,
             lambda r: f"trial {r['trial']}: {r['next_save']}" if r["next_save"] != "ok" else ""),
    ]


def _median(trials: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median([t[key] for t in trials])) if trials else 0.0


def page(results: dict[str, Any]) -> str:
    lines = ["| measurement | kills | target | status |", "| --- | ---: | --- | --- |"]
    lines += [f"| {r['measurement']} | {r['value']} | {r['target']} | **{r['status']}** |" for r in results["rows"]]
    body = "\n".join([f"Verdict: **{results['verdict']}** (target: every kill loaded exactly; 0 refused, 0 wrong, "
                      f"0 crashed; every post-kill save good).", "", *lines])
    settings, found = results["settings"], results["results"]
    calibration = found["calibration"]
    extra = ["Where the kills landed (the folder right after the kill):", "",
             "| where | kills | outcomes | what the folder showed |", "| --- | ---: | --- | --- |"]
    for name, text in LANDINGS.items():
        outcomes = ", ".join(f"{k} {v}" for k, v in found["outcomes_by_landing"].get(name, {}).items()) or "-"
        extra.append(f"| {name} | {found['landings'][name]} | {outcomes} | {text} |")
    saves = [r["saves_reported"] for r in found["trials"]]
    extra += ["", f"Saver: {settings['model']}, a checkpoint of {settings['checkpoint_bytes']}; `save_state()` "
              f"{calibration['save_state_s'] * 1e3:.0f} ms, a save cycle {calibration['cycle_s'] * 1e3:.0f} ms "
              f"(medians of the calibration run); kill window {settings['window_s'] * 1e3:.0f} ms after the first "
              f"save ({settings['window']}), seed {settings['seed']}; saves completed before a kill: "
              f"{min(saves, default=0)} to {max(saves, default=0)}, median {statistics.median(saves or [0]):g}. "
              f"Per trial (medians): {_median(found['trials'], 'go_to_first_save_s'):.2f} s from the saver's go (it "
              f"starts up while the trial before is checked) to its first save, {_median(found['trials'], 'check_s'):.1f}"
              f" s for the checking process."]
    command = "python benchmarks/faults.py" + ("" if settings["trials"] == DEFAULT_TRIALS else
                                                f" --trials {settings['trials']}")
    return document("Faults: kill -9 during save_state and rotation", command, results, body, METHOD, extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS, help=f"kills (default {DEFAULT_TRIALS})")
    parser.add_argument("--quick", action="store_true", help=f"a short smoke run: --trials {QUICK_TRIALS}")
    parser.add_argument("--window", type=float, default=None,
                        help=f"kill window in seconds after the first save (default: {WINDOW_SAVES} save cycles)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays")
    parser.add_argument("--results-dir", type=Path, default=HERE / "results", help="where faults.json and faults.md go")
    parser.add_argument("--tmpdir", default=None, help="scratch directory (default: the system's temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials = QUICK_TRIALS
    if args.trials < 1:
        parser.error(f"--trials {args.trials}: expected at least 1")
    sandbox = Sandbox(args.tmpdir)
    sandbox.enter()
    started = time.perf_counter()
    try:
        entry = measure(sandbox, args.trials, args.window, args.seed)
    finally:
        sandbox.close()
    results: dict[str, Any] = {
        "suite": "faults", "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.perf_counter() - started, 1),
        "mode": "full" if args.trials >= DEFAULT_TRIALS else "short",
        "machine": machine_info(), **entry,
    }
    markdown = page(results)
    json_path, md_path = write_results(args.results_dir, "faults", results, markdown)
    print(markdown)
    print(f"wrote {json_path} and {md_path} in {results['duration_s']:.0f} s", file=sys.stderr)
    return 0 if results["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
