"""Restarts: from a worker's death to training again, ``plait launch`` against torchrun, and recoveries under load.

    python benchmarks/restarts.py            # about 8 minutes on 2 cores
    python benchmarks/restarts.py --quick    # a short smoke run (about 2 minutes)

The same script (``_restart_worker.py``: an MLP trained through ``plait.Accelerator``, a
checkpoint every 2 steps) runs on 2 CPU processes; global rank 1 SIGKILLs itself after
step 3, once, and the restarted job resumes from the newest checkpoint.

* Recovery time: from the dying worker's ``time.time()`` just before its SIGKILL to the
  end of the restarted rank 0's first step after resuming, for
  ``plait launch --max-restarts 1 --num-processes 2`` against
  ``torchrun --max-restarts 1 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint localhost:0``,
  torchrun twice per round (raw and the A/A control), the order rotated from round to round.
* Recoveries under load: the same launches with 3 busy loops (``python -c "while True: pass"``)
  running, for plait and torchrun, taking turns; a trial recovers when the job ends with exit
  code 0 and parameters bit-identical to an uninterrupted run's, within its time limit.

Writes ``benchmarks/results/restarts.json`` and ``benchmarks/results/restarts.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import CONTROL, HERE, Sandbox, compare_sets, document, launch_rounds, log, median, row, run_suite, table

BIN = Path(sys.executable).parent
COLUMNS = ("raw", CONTROL, "plait")
WORKER = HERE / "_restart_worker.py"
KILL_AT = 3
#: A launch that has not ended by then did not recover (it is stopped, and so are its workers).
LIMIT_S = 60
PLANS = {"full": {"rounds": 3, "trials_under_load": 5, "busy_loops": 3},
         "quick": {"rounds": 1, "trials_under_load": 1, "busy_loops": 3}}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--max-restarts", "1", "--nproc-per-node", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", "--monitor-interval", "0.1"]
PLAIT = [str(BIN / "plait"), "launch", "--max-restarts", "1", "--num-processes", "2"]
METHOD = [
    "Every launch is a fresh launcher and its 2 workers (gloo, one thread each), with an empty config home and a "
    "project directory of its own; an uninterrupted launch first gives the parameters every recovered job must "
    "match bit for bit, and warms the caches.",
    "Recovery time: the dying worker writes `time.time()` just before it SIGKILLs itself; the restarted rank 0 "
    "writes `time.time()` when its first step after resuming ends; their difference. A round launches each "
    "contender once, in an order rotated from round to round; torchrun runs twice per round, as `raw` and "
    "`raw_control` (the A/A control: what noise alone does). Medians over the recovered launches.",
    f"Recoveries under load: the busy loops start before the first trial and stop after the last; plait and "
    f"torchrun take turns. A launch recovers when it ends with exit code 0, within {LIMIT_S} s, with the "
    f"uninterrupted run's parameters bit for bit; a launch still running at {LIMIT_S} s is stopped (its process "
    f"group killed) and counted as not recovered.",
    "The rows are counts and times on a shared machine, without a target (info), except plait's recoveries, "
    "which must be every trial.",
]


def _launch(command: list[str], env: dict[str, str], project: Path, out: Path, kill: bool) -> dict[str, Any]:
    """One launch: its exit code, whether it ended in time, its report and its recovery time, if any."""
    args = [str(WORKER), str(out), str(project), *(["--kill-at", str(KILL_AT)] if kill else [])]
    started = time.time()
    process = subprocess.Popen([*command, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, cwd=HERE, start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=LIMIT_S)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        _stop_group(process)
        stderr, code = "", None
    result: dict[str, Any] = {"exit_code": code, "wall_s": round(time.time() - started, 2),
                              "mesh_failures": stderr.count("connectFullMesh failed")}
    if out.exists():
        result["report"] = json.loads(out.read_text())
    if (project / "killed").exists() and (project / "resumed").exists():
        result["recovery_s"] = float((project / "resumed").read_text()) - float((project / "killed").read_text())
    return result


def _stop_group(process: subprocess.Popen[str]) -> None:
    """Kill a launcher that did not end, and its workers (each in a process group of its own)."""
    for pid in [*_children(process.pid), process.pid]:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    process.communicate()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class Trials:
    """Numbered launches, each in a project directory of its own under the sandbox's scratch space."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.env = sandbox.launch_env()
        self.count = 0
        self.reference: dict[str, Any] | None = None

    def run(self, contender: str, kill: bool = True) -> dict[str, Any]:
        self.count += 1
        where = self.sandbox.scratch / f"trial{self.count}"
        where.mkdir()
        command = PLAIT if contender == "plait" else TORCHRUN
        result = _launch(command, self.env, where / "project", where / "out.json", kill)
        report = result.pop("report", None)
        params = None if report is None else report["params"]
        result["recovered"] = result["exit_code"] == 0 and params is not None and params == self.reference
        if report is not None:
            result["restart_count"] = report["restart_count"]
        shutil.rmtree(where, ignore_errors=True)
        if self.reference is None and params is not None:
            self.reference = params
        return result


def measure(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    plan = PLANS["quick" if quick else "full"]
    trials = Trials(sandbox)
    log("restarts: an uninterrupted launch (the reference parameters; warms the caches)")
    first = trials.run("raw", kill=False)
    if first["exit_code"] != 0:
        raise RuntimeError(f"the uninterrupted launch failed: {first}")
    timed = launch_rounds(list(COLUMNS), plan["rounds"], lambda c, _: trials.run(c), "restarts: recovery time")
    log(f"restarts: {plan['busy_loops']} busy loops on")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(plan["busy_loops"])]
    try:
        loaded = launch_rounds(["raw", "plait"], plan["trials_under_load"], lambda c, _: trials.run(c),
                               "restarts: under load")
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()

    rows = []
    recovered = {c: [r["recovery_s"] for r in v if r["recovered"] and "recovery_s" in r] for c, v in timed.items()}
    rounds_all = [r for r in range(plan["rounds"]) if all(timed[c][r]["recovered"] for c in COLUMNS)]
    sets = [{c: [timed[c][r]["recovery_s"]] for c in COLUMNS} for r in rounds_all]
    compared = compare_sets(sets) if sets else None
    values = {c: (median(v) if v else None) for c, v in recovered.items()}
    ratios = compared["ratio"] if compared else {}
    rows.append(row("recovery", "a worker's SIGKILL to rank 0's first step after resuming, 2 CPU processes", "s",
                    values, ratios, "-", "info",
                    f"medians over recovered launches ({', '.join(f'{c} {len(v)}' for c, v in recovered.items())} of "
                    f"{plan['rounds']}); ratios paired by round over the {len(sets)} rounds every contender recovered",
                    columns=COLUMNS, control=ratios.get(CONTROL)))
    counts = {c: float(sum(r["recovered"] for r in v)) for c, v in timed.items()}
    rows.append(row("recovery", f"launches recovered bit-identically, quiet machine, of {plan['rounds']}", "launches",
                    counts, None, "-", "info", columns=COLUMNS))
    under = {c: float(sum(r["recovered"] for r in v)) for c, v in loaded.items()}
    trials_n = plan["trials_under_load"]
    status = "PASS" if under["plait"] == trials_n else "FAIL"
    mesh = {c: sum(r["mesh_failures"] for r in v) for c, v in loaded.items()}
    rows.append(row("recovery under load", f"launches recovered bit-identically with {plan['busy_loops']} busy loops, "
                    f"of {trials_n}", "launches", {"raw": under["raw"], "plait": under["plait"]}, None,
                    f"plait {trials_n} of {trials_n}", status,
                    f"`Gloo connectFullMesh failed` lines: torchrun {mesh['raw']}, plait {mesh['plait']}",
                    columns=COLUMNS))
    return {
        "settings": {**plan, "kill_at_step": KILL_AT, "limit_s": LIMIT_S, "worker": WORKER.name,
                     "torchrun": " ".join(TORCHRUN[3:]), "plait": " ".join(["plait", *PLAIT[1:]])},
        "targets": {"plait recoveries under load": f"{trials_n} of {trials_n}"},
        "results": {"uninterrupted": first, "timed": timed, "under_load": loaded, "recovery_compared": compared},
        "rows": rows,
    }


def page(results: dict[str, Any]) -> str:
    labels = {"raw": "torchrun (c10d)", CONTROL: "torchrun (A/A)"}
    body = table(results["rows"], COLUMNS, labels, control=True)
    settings = results["settings"]
    extra = [f"Commands: `{settings['plait']} {settings['worker']} ...` and `torchrun {settings['torchrun']} "
             f"{settings['worker']} ...`; rank 1 kills itself after step {settings['kill_at_step']}."]
    return document("Restarts: recovery after a worker's death", "python benchmarks/restarts.py", results, body,
                    METHOD, extra)


def main(argv: list[str] | None = None) -> int:
    return run_suite(argv, name="restarts", doc=__doc__ or "", measure=measure, page=page)


if __name__ == "__main__":
    sys.exit(main())
