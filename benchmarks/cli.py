"""Start-up of the ``plait`` command against HF Accelerate's, and launch-to-first-step against torchrun.

    python benchmarks/cli.py            # about 2 minutes on 2 cores
    python benchmarks/cli.py --quick    # a short smoke run

* Start-up: wall time of ``plait --help``, ``plait plugins`` and ``plait env`` against
  ``accelerate --help`` and ``accelerate env``, each a fresh process, runs interleaved,
  median reported (``python -c pass`` is the floor). Target: ``plait --help`` and
  ``plait plugins`` <= 0.25 s.
* Launch to first step: the same script (an MLP trained through ``plait.Accelerator``)
  started on 2 CPU processes by ``plait launch --num-processes 2`` and by
  ``torchrun --standalone --nproc-per-node 2``; the time from starting the launcher to
  the end of rank 0's first optimizer step, launches alternated, median reported.
  (``accelerate launch --cpu`` starts a single process on a CPU machine, so it is not
  a like-for-like contender here.)

Writes ``benchmarks/results/cli.json`` and ``benchmarks/results/cli.md``. Every run
gets an empty ``XDG_CONFIG_HOME`` and ``HF_HOME``, so no user config changes the work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent

FIRST_STEP = r'''
import sys, time
import torch
from torch.utils.data import DataLoader, TensorDataset
from plait import Accelerator

accelerator = Accelerator()
data = TensorDataset(torch.randn(512, 64), torch.randn(512, 1))
model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 1))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
model, optimizer, loader = accelerator.prepare(model, optimizer, DataLoader(data, batch_size=32))
for x, y in loader:
    accelerator.backward(torch.nn.functional.mse_loss(model(x), y))
    optimizer.step()
    optimizer.zero_grad()
    if accelerator.is_main_process:
        with open(sys.argv[1], "w") as f:
            f.write(repr(time.time()))
    break
accelerator.end_training()
'''


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "ACCELERATE_"))}
    env.update({"XDG_CONFIG_HOME": str(home / "config"), "HF_HOME": str(home / "hf")})
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # start-up as users see it, with bytecode caches
    return env


def _time(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def startup(repeats: int, env: dict[str, str]) -> dict[str, list[float]]:
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "plait --help": [str(BIN / "plait"), "--help"],
        "plait plugins": [str(BIN / "plait"), "plugins"],
        "plait env": [str(BIN / "plait"), "env"],
    }
    accelerate = shutil.which("accelerate", path=str(BIN)) or shutil.which("accelerate")
    if accelerate:
        commands["accelerate --help"] = [accelerate, "--help"]
        commands["accelerate env"] = [accelerate, "env"]
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for command in commands.values():  # warm the page cache once
        _time(command, env)
    for _ in range(repeats):
        for name, command in commands.items():
            samples[name].append(_time(command, env))
    return samples


def first_step(repeats: int, env: dict[str, str], scratch: Path) -> dict[str, list[float]]:
    script = scratch / "first_step.py"
    script.write_text(FIRST_STEP)
    marker = scratch / "first_step.time"
    launchers = {
        "plait launch": [str(BIN / "plait"), "launch", "--num-processes", "2", str(script), str(marker)],
        "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     str(script), str(marker)],
    }
    samples: dict[str, list[float]] = {name: [] for name in launchers}
    for round_ in range(repeats + 1):
        order = list(launchers) if round_ % 2 == 0 else list(reversed(launchers))
        for name in order:
            marker.unlink(missing_ok=True)
            start = time.time()
            subprocess.run(launchers[name], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            if round_:  # the first round only warms caches
                samples[name].append(float(marker.read_text()) - start)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="plait-bench-cli-") as directory:
        scratch = Path(directory)
        env = _env(scratch)
        starts = startup(3 if args.quick else 15, env)
        launches = first_step(1 if args.quick else 6, env, scratch)

    med = {name: statistics.median(values) for name, values in {**starts, **launches}.items()}
    results = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "startup_s": {name: {"median": med[name], "samples": starts[name]} for name in starts},
        "launch_to_first_step_s": {name: {"median": med[name], "samples": launches[name]} for name in launches},
        "targets": {
            "plait --help <= 0.25 s": med["plait --help"] <= 0.25,
            "plait plugins <= 0.25 s": med["plait plugins"] <= 0.25,
        },
    }
    lines = [
        "# plait command: start-up and launch",
        "",
        f"{os.cpu_count()} cores, Python {sys.version.split()[0]}. Medians of fresh processes "
        f"({len(starts['plait --help'])} runs each; launches: {len(launches['torchrun'])} each, alternated).",
        "",
        "| command | wall time (s) |",
        "| --- | --- |",
        *(f"| `{name}` | {med[name]:.3f} |" for name in starts),
        "",
        "| launcher (2 CPU processes, same script) | start to end of first step (s) |",
        "| --- | --- |",
        *(f"| `{name}` | {med[name]:.2f} |" for name in launches),
        "",
        f"`plait launch` over torchrun: {med['plait launch'] / med['torchrun']:.3f}x. "
        "Targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}" for k, v in results["targets"].items()) + ".",
    ]
    if "accelerate --help" in med:
        lines.append(f"`accelerate --help` / `plait --help`: {med['accelerate --help'] / med['plait --help']:.1f}x.")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "cli.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.results_dir / "cli.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
