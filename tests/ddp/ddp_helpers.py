"""Helpers shared by the ddp test modules: an isolated environment, free ports, launcher-free subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from plait.testing import LAUNCHER_VARIABLES, free_port, identical, isolate_environment, max_diff

__all__ = ["clean_environment", "free_port", "identical", "max_diff", "plain_env", "start_plain", "wait_all"]

HERE = Path(__file__).parent
SCRIPTS = HERE / "scripts"


@pytest.fixture(scope="module", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No PLAIT_*, SLURM_* or launcher variable, and an empty XDG_CONFIG_HOME, for the whole module
    (module-scoped so that the module-scoped launches below see it too)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, tmp_path_factory.mktemp("xdg"))
        yield


def plain_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This (clean) environment plus ``extra``: what a process started without torchrun sees."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")}
    env.update(extra)
    return env


def start_plain(script: Path, envs: list[dict[str, str]], args: list[str]) -> list[subprocess.Popen[str]]:
    """Start one plain ``python script`` per environment (no launcher), as srun or a user would."""
    return [
        subprocess.Popen([sys.executable, str(script), *args], env=plain_env(env), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
        for env in envs
    ]


def wait_all(processes: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str]]:
    """Each process's (exit code, output); a process still running after ``timeout`` s fails the test."""
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=timeout)
            results.append((process.returncode, output))
    except subprocess.TimeoutExpired:
        outputs = []
        for process in processes:
            process.kill()
            outputs.append(process.communicate()[0])
        pytest.fail(f"processes still running after {timeout} s (a hang):\n" + "\n---\n".join(o[-3000:] for o in outputs))
    return results


