"""Start-up of the ``plait`` command against HF Accelerate's, and launch-to-first-step against torchrun.

    python benchmarks/cli.py            # about 3 minutes on 2 cores
    python benchmarks/cli.py --quick    # a short smoke run (about 30 s)

* Start-up: wall time of ``plait --help``, ``plait plugins`` and ``plait env`` against
  ``accelerate --help`` and ``accelerate env``, each a fresh process. ``python -c pass``
  (the interpreter's floor) runs twice per round, as ``raw`` and as the A/A control
  ``raw_control``; rounds run every command once, the order rotated from round to
  round; medians over rounds. Target: ``plait --help`` and ``plait plugins`` <= 0.25 s.
* Launch to first step: the same script (``_cli_first_step.py``, an MLP trained through
  ``plait.Accelerator``) started on 2 CPU processes by ``plait launch --num-processes 2``
  and by ``torchrun --standalone --nproc-per-node 2`` (twice: raw and A/A control); the
  time from starting the launcher to the end of rank 0's first optimizer step.
  (``accelerate launch --cpu`` starts a single process on a CPU machine, so it is not
  a like-for-like contender here.)

Writes ``benchmarks/results/cli.json`` and ``benchmarks/results/cli.md``. Every run
gets an empty ``XDG_CONFIG_HOME`` and ``HF_HOME``, so no user config changes the work.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import CONTROL, HERE, Sandbox, compare_sets, document, judge, launch_rounds, median, row, run_suite, table

BIN = Path(sys.executable).parent
COLUMNS = ("raw", CONTROL, "plait", "accelerate")
TARGETS = {"plait --help": 0.25, "plait plugins": 0.25}
PLANS = {"full": {"startup_rounds": 15, "launch_rounds": 6}, "quick": {"startup_rounds": 3, "launch_rounds": 1}}
METHOD = [
    "Every measurement is a fresh process (or, for launches, a fresh launcher and its 2 workers), with an empty "
    "config home and bytecode caches as installed; one warm-up run of each command first, not counted.",
    "A round runs every contender once, in an order rotated from round to round. `python -c pass` (start-up) and "
    "`torchrun` (launch) run twice per round, as `raw` and `raw_control`; the A/A control is their difference "
    "(start-up, in seconds) or ratio (launch): what noise alone does.",
    "Start-up rows are judged against an absolute target: noisy when the A/A difference exceeds the target, or "
    "the rounds spread so widely that the median is not known to half of it (unless the value lies more than two such uncertainties from the target). The launch row has no target (info).",
]


def _time(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, cwd=HERE)
    return time.perf_counter() - start


def startup(sandbox: Sandbox, rounds: int) -> dict[str, list[float]]:
    env = sandbox.launch_env()
    pass_ = [sys.executable, "-c", "pass"]
    commands = {
        "raw": pass_, CONTROL: pass_,
        "plait --help": [str(BIN / "plait"), "--help"],
        "plait plugins": [str(BIN / "plait"), "plugins"],
        "plait env": [str(BIN / "plait"), "env"],
    }
    accelerate = shutil.which("accelerate", path=str(BIN)) or shutil.which("accelerate")
    if accelerate:
        commands["accelerate --help"] = [accelerate, "--help"]
        commands["accelerate env"] = [accelerate, "env"]
    for command in commands.values():  # warm the page cache once
        _time(command, env)
    return launch_rounds(list(commands), rounds, lambda name, _: _time(commands[name], env), "cli start-up")


def first_step(sandbox: Sandbox, rounds: int) -> dict[str, list[float]]:
    env = sandbox.launch_env()
    script = HERE / "_cli_first_step.py"
    marker = sandbox.scratch / "first_step.time"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                str(script), str(marker)]
    launchers = {"raw": torchrun, CONTROL: torchrun,
                 "plait": [str(BIN / "plait"), "launch", "--num-processes", "2", str(script), str(marker)]}

    def launch(name: str, _: int) -> float:
        marker.unlink(missing_ok=True)
        start = time.time()
        subprocess.run(launchers[name], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       cwd=HERE)
        return float(marker.read_text()) - start

    for name in launchers:  # a first, uncounted launch of each warms the caches
        launch(name, -1)
    return launch_rounds(list(launchers), rounds, launch, "cli launch")


def measure(sandbox: Sandbox, quick: bool) -> dict[str, Any]:
    plan = PLANS["quick" if quick else "full"]
    starts = startup(sandbox, plan["startup_rounds"])
    launches = first_step(sandbox, plan["launch_rounds"])
    n = plan["startup_rounds"]
    per_round = compare_sets([{c: [v[r]] for c, v in starts.items()} for r in range(n)])
    control_s = per_round["difference"][CONTROL]
    rows = []
    for what in ("--help", "plugins", "env"):
        mine, theirs = f"plait {what}", f"accelerate {what}"
        values = {"raw": per_round["value"]["raw"], CONTROL: per_round["value"][CONTROL],
                  "plait": per_round["value"][mine], "accelerate": per_round["value"].get(theirs)}
        note = f"raw: `python -c pass`; accelerate: `{theirs}`" if theirs in starts else "raw: `python -c pass`"
        status, target = "info", "-"
        if mine in TARGETS:
            status, why = judge(values["plait"] or 0.0, TARGETS[mine], control=control_s, per_set=starts[mine], unit="s")
            target = f"<= {TARGETS[mine]:.2f} s"
            note = "; ".join(filter(None, [note, f"A/A difference {control_s * 1e3:+.1f} ms", why]))
        rows.append(row("start-up", f"`{mine}` wall time, fresh process (median of {n})", "s", values,
                        {CONTROL: per_round["ratio"][CONTROL]}, target, status, note, columns=COLUMNS))
    launch_sets = compare_sets([{c: [v[r]] for c, v in launches.items()} for r in range(plan["launch_rounds"])])
    rows.append(row("launch", "start of the launcher to the end of rank 0's first step, 2 CPU processes", "s",
                    launch_sets["value"], launch_sets["ratio"], "-", "info",
                    "raw: `torchrun --standalone --nproc-per-node 2`; plait: `plait launch --num-processes 2`",
                    columns=COLUMNS))
    return {
        "settings": {**plan, "startup_floor": "python -c pass", "launch_script": "_cli_first_step.py"},
        "targets": TARGETS,
        "results": {
            "startup_s": {name: {"median": median(v), "samples": v} for name, v in starts.items()},
            "launch_to_first_step_s": {name: {"median": median(v), "samples": v} for name, v in launches.items()},
            "startup_compared": per_round, "launch_compared": launch_sets,
        },
        "rows": rows,
    }


def page(results: dict[str, Any]) -> str:
    labels = {"raw": "raw (python / torchrun)", CONTROL: "raw (A/A)"}
    body = table(results["rows"], COLUMNS, labels)
    startup_s = results["results"]["startup_s"]
    extra = ["| command | wall time (s), median |", "| --- | ---: |",
             *(f"| `{'python -c pass' if n in ('raw', CONTROL) else n}`{' (A/A)' if n == CONTROL else ''} | "
               f"{v['median']:.3f} |" for n, v in startup_s.items())]
    if "accelerate --help" in startup_s:
        ratio = startup_s["accelerate --help"]["median"] / startup_s["plait --help"]["median"]
        extra += ["", f"`accelerate --help` / `plait --help`: {ratio:.1f}x."]
    return document("plait command: start-up and launch", "python benchmarks/cli.py", results, body, METHOD, extra)


def main(argv: list[str] | None = None) -> int:
    return run_suite(argv, name="cli", doc=__doc__ or "", measure=measure, page=page)


if __name__ == "__main__":
    sys.exit(main())
