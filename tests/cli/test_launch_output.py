"""What a person sees in the terminal of `plait launch`: one process writes as itself, several are told apart by
rank on every line, and torch's OMP_NUM_THREADS banner never shows (plait sets the thread count itself)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_helpers import plait

#: A worker that writes two lines to stdout and one to stderr, naming its rank and its thread count.
WORKER = """
import os, sys
rank = os.environ["RANK"]
print(f"worker {rank} threads={os.environ.get('OMP_NUM_THREADS')}")
print(f"worker {rank} says bye")
print(f"worker {rank} on stderr", file=sys.stderr)
"""
BANNER = "Setting OMP_NUM_THREADS environment variable"


@pytest.fixture
def worker(tmp_path: Path) -> Path:
    path = tmp_path / "worker.py"
    path.write_text(WORKER)
    return path


@pytest.fixture
def temporary(tmp_path: Path) -> Path:
    """The launcher's TMPDIR: where torch would leave its copies of the workers' output."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    return folder


def launch(worker: Path, temporary: Path, processes: int, **env: str) -> tuple[list[str], list[str]]:
    result = plait("launch", "--num-processes", str(processes), "--cpu", str(worker), env={"TMPDIR": str(temporary), **env})
    assert result.returncode == 0, result.stderr[-6000:]
    return result.stdout.splitlines(), result.stderr.splitlines()


def test_one_process_writes_its_lines_unprefixed_and_without_the_thread_banner(worker, temporary, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")
    stdout, stderr = launch(worker, temporary, 1)

    assert stdout == ["worker 0 threads=None", "worker 0 says bye"]  # torch's default: every CPU for one worker
    assert stderr == ["worker 0 on stderr"]


def test_two_processes_prefix_every_worker_line_with_its_rank_and_plait_shares_the_cpus(worker, temporary, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")
    stdout, stderr = launch(worker, temporary, 2)

    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert sorted(stdout) == sorted(
        f"[rank{r}]: {line}" for r in (0, 1) for line in (f"worker {r} threads={threads}", f"worker {r} says bye"))
    for rank in (0, 1):  # each worker's lines in its own order
        mine = [line for line in stdout if line.startswith(f"[rank{rank}]: ")]
        assert mine == [f"[rank{rank}]: worker {rank} threads={threads}", f"[rank{rank}]: worker {rank} says bye"]
    worker_lines = [line for line in stderr if "on stderr" in line]
    assert sorted(worker_lines) == ["[rank0]: worker 0 on stderr", "[rank1]: worker 1 on stderr"]
    assert not any(BANNER in line for line in stderr), stderr  # and nothing else of torch's in between
    assert all(line.startswith(("[rank0]: ", "[rank1]: ")) for line in stderr), stderr
    assert list(temporary.iterdir()) == []  # the copies of the workers' output were removed with the job


def test_num_cpu_threads_per_process_wins_over_the_environment(worker, temporary, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    result = plait("launch", "--num-processes", "2", "--cpu", "--num_cpu_threads_per_process", "2", str(worker),
                   env={"TMPDIR": str(temporary)})

    assert result.returncode == 0, result.stderr[-6000:]
    assert sorted(line for line in result.stdout.splitlines() if "threads=" in line) == [
        "[rank0]: worker 0 threads=2", "[rank1]: worker 1 threads=2"]


def test_a_worker_s_traceback_is_prefixed_once_though_torch_prefixes_it_too(tmp_path, temporary):
    failing = tmp_path / "failing.py"
    failing.write_text(
        "import os\nfrom plait import Accelerator\n"
        "Accelerator(cpu=True)  # starts the process group, and with it torch's own prefixing excepthook\n"
        "raise ValueError(f\"boom from {os.environ['RANK']}\")\n"
    )
    result = plait("launch", "--num-processes", "2", "--cpu", str(failing), env={"TMPDIR": str(temporary)})

    assert result.returncode == 1, result.stderr[-6000:]
    lines = result.stderr.splitlines()
    assert any(line == "[rank0]: ValueError: boom from 0" for line in lines), result.stderr[-6000:]
    assert any(line == "[rank1]: Traceback (most recent call last):" for line in lines)
    assert not any("]: [rank" in line for line in lines), result.stderr[-6000:]
    assert "plait launch: worker rank" in result.stderr and list(temporary.iterdir()) == []
