"""Running the xla workers as a user runs them, and reading what they wrote."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKERS = HERE / "xla_workers.py"
#: One worker start costs 10-20 s on two busy cores (torch_xla's import and XLA's compilations).
TIMEOUT = 600


def environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ)  # the session fixture removed PLAIT_*, the launchers' and XLA's variables
    env.update({"PJRT_DEVICE": "CPU", "TF_CPP_MIN_LOG_LEVEL": "2", **extra})
    return env


def plait_command() -> list[str]:
    found = shutil.which("plait", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "plait_cli.main"]


def run(argv: list[str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=environment(**extra), capture_output=True, text=True, timeout=TIMEOUT, cwd=HERE)


def worker(out: Path, scenario: str, *args: str, launch: list[str] | None = None, expect: int = 0,
           **extra: str) -> dict[str, dict[str, Any]]:
    """Run ``scenario`` (under ``plait launch`` with ``launch`` flags, else ``python``); the results by rank."""
    command = [*plait_command(), "launch", *launch] if launch is not None else [sys.executable]
    done = run([*command, str(WORKERS), scenario, str(out / scenario), *args], **extra)
    assert done.returncode == expect, f"exit code {done.returncode}, expected {expect}\n{done.stdout}\n{done.stderr[-6000:]}"
    return {path.name.split(".")[-2]: json.loads(path.read_text()) for path in sorted(out.glob(f"{scenario}.*.json"))}
