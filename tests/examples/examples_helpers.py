"""Running the example scripts as a user does (``python script.py``, ``plait launch --num_processes 2 --cpu``)
and reading back the numbers they write (``--result_file``).

:func:`start` starts a run and returns at once, so that a test can start a script's one-process and
two-process runs together (the machine's two cores are then both busy) and :func:`wait` for them all.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
BY_FEATURE = EXAMPLES / "by_feature"
PLAIT = str(Path(sys.executable).with_name("plait"))


@dataclass
class Started:
    """A running example: its command, its process, where its output and its result file go."""

    command: list[str]
    process: subprocess.Popen[bytes]
    output: Path
    result_file: Path | None

    def finish(self, timeout: float = 300, check: bool = True) -> tuple[int, str]:
        """Wait for the run; its exit code and output. A failure (when ``check``) fails the test."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"{' '.join(self.command)} still running after {timeout} s:\n{self.text()[-3000:]}")
        if check and code != 0:
            pytest.fail(f"{' '.join(self.command)} exited with {code}:\n{self.text()[-6000:]}")
        return code, self.text()

    def text(self) -> str:
        return self.output.read_text(errors="replace")


def start(script: str, args: Sequence[str], cwd: Path, processes: int = 1, launch: Sequence[str] = (),
          python: Sequence[str] | None = None, result: bool = True, folder: Path = BY_FEATURE,
          result_flag: str = "--result_file") -> Started:
    """Start ``<folder>/<script> args`` (``folder``: examples/by_feature unless given; the scripts of examples/
    take ``result_flag="--result-file"``) in ``cwd`` (created): ``python script`` on one process,
    ``plait launch --num_processes N --cpu [launch...] script`` on more. ``python`` replaces ``python script``
    (a ``-c`` wrapper; it runs with examples/by_feature on ``PYTHONPATH``, where ``python script`` has it on
    ``sys.path``: the scripts import their shared ``synthetic_pairs`` and ``synthetic_text`` from it). With
    ``result``, ``--result_file cwd/result.json`` is added. Output goes to ``cwd/output.log``."""
    cwd.mkdir(parents=True, exist_ok=True)
    path = str(folder / script)
    result_file = cwd / "result.json" if result else None
    extra = [result_flag, str(result_file)] if result_file is not None else []
    if processes == 1 and not launch:
        command = [sys.executable, *(python if python is not None else [path]), *args, *extra]
    else:
        command = [PLAIT, "launch", "--num_processes", str(processes), "--cpu", *launch, path, *args, *extra]
    env = None
    if python is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(BY_FEATURE), os.environ.get("PYTHONPATH")]))}
    output = cwd / "output.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    return Started(command, process, output, result_file)


def wait(*runs: Started, timeout: float = 300) -> list[dict[str, Any]]:
    """Wait for every run (all of them, even after a failure); each one's result file."""
    failures = []
    for run in runs:
        try:
            run.finish(timeout)
        except pytest.fail.Exception as failure:
            failures.append(str(failure))
    if failures:
        pytest.fail("\n\n".join(failures))
    return [read_result(run.result_file) for run in runs if run.result_file is not None]


def run_for_result(script: str, args: Sequence[str], cwd: Path, processes: int = 1,
                   launch: Sequence[str] = ()) -> dict[str, Any]:
    """One run, waited for; its result file."""
    (result,) = wait(start(script, args, cwd, processes, launch))
    return result


def read_result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def max_difference(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    """The largest absolute difference between two runs' parameters (same names and shapes)."""
    assert a.keys() == b.keys(), f"different parameters: {sorted(set(a) ^ set(b))}"
    worst = 0.0
    for name in a:
        assert len(a[name]) == len(b[name]), f"{name}: {len(a[name])} values against {len(b[name])}"
        worst = max([worst, *(abs(x - y) for x, y in zip(a[name], b[name]))])
    return worst


def loss_went_down(losses: Sequence[float], window: int = 3) -> bool:
    """Whether the mean of the last ``window`` losses is below the mean of the first ``window``."""
    assert len(losses) >= 2 * window, f"only {len(losses)} losses"
    return sum(losses[-window:]) / window < sum(losses[:window]) / window


def shrinking_batch_sizes(first: int, fits: int) -> list[int]:
    """The batch sizes ``find_executable_batch_size`` tries from ``first`` (times 0.9, rounded down, as in
    HF Accelerate) until one is at most ``fits``."""
    sizes = [first]
    while sizes[-1] > fits:
        sizes.append(int(sizes[-1] * 0.9))
    return sizes
