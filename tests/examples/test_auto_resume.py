"""examples/auto_resume.py, run as its docstring says: ``plait launch --max-restarts 3 --num-processes 2``.

A run whose workers are killed with SIGKILL at several moments (during training, right after a checkpoint
appeared) must end with final weights bit-identical to those of a run never interrupted; a run stopped by
SIGTERM must save, exit with 143, and finish on the next start with the same weights.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRIPT = str(REPO / "examples" / "auto_resume.py")
PLAIT = str(Path(sys.executable).with_name("plait"))
EPOCHS = "2"
SAVE_EVERY = "10"


def launch(project: Path, restarts: int, log: Path) -> subprocess.Popen[bytes]:
    command = [PLAIT, "launch", "--max-restarts", str(restarts), "--num-processes", "2", SCRIPT,
               "--project-dir", str(project), "--epochs", EPOCHS, "--save-every", SAVE_EVERY]
    with log.open("ab") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the job still ran after {timeout} s:\n{log.read_text(errors='replace')[-4000:]}")


def workers_of(launcher: int) -> list[int]:
    """The launcher's child processes (its workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == launcher:
            children.append(int(entry.name))
    return sorted(children)


def checkpoints(project: Path) -> list[Path]:
    folder = project / "checkpoints"
    return sorted(folder.glob("checkpoint_*/plait_checkpoint.json")) if folder.is_dir() else []


def newest_checkpoint(project: Path) -> int:
    return max(int(p.parent.name.split("_")[1]) for p in checkpoints(project))


def wait_for(condition, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the job ended (exit {process.returncode}) too early:\n{log.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s in vain:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    project = tmp_path_factory.mktemp("uninterrupted")
    log = project / "output.log"
    code = finish(launch(project, 0, log), log)
    assert code == 0, log.read_text()[-4000:]
    return load_file(project / "final" / "model.safetensors")


def assert_bit_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), f"{name} differs by {float((got[name] - tensor).abs().max())}"


def test_kill_9_of_a_worker_at_several_moments_ends_bit_identical(tmp_path: Path, reference) -> None:
    log = tmp_path / "output.log"
    job = launch(tmp_path, 3, log)
    # 1: rank 1 before any checkpoint exists (the restart starts from scratch).
    wait_for(lambda: len(workers_of(job.pid)) == 2, job, log)
    time.sleep(2)
    assert not checkpoints(tmp_path), "the first kill is meant to come before any checkpoint: make it earlier"
    os.kill(workers_of(job.pid)[1], signal.SIGKILL)
    # 2: rank 0 just after the second checkpoint of the restarted run appeared.
    wait_for(lambda: len(checkpoints(tmp_path)) >= 2, job, log)
    os.kill(workers_of(job.pid)[0], signal.SIGKILL)
    code = finish(job, log)

    text = log.read_text(errors="replace")
    assert code == 0, text[-4000:]
    assert "resumed from" in text, text[-4000:]  # the second restart resumed from a checkpoint
    assert_bit_identical(load_file(tmp_path / "final" / "model.safetensors"), reference)


def test_sigterm_saves_exits_143_and_the_next_start_finishes_bit_identical(tmp_path: Path, reference) -> None:
    log = tmp_path / "output.log"
    job = launch(tmp_path, 0, log)
    wait_for(lambda: len(checkpoints(tmp_path)) >= 1, job, log)
    newest = newest_checkpoint(tmp_path)
    job.send_signal(signal.SIGTERM)
    code = finish(job, log)

    text = log.read_text(errors="replace")
    assert code == 143, text[-4000:]
    assert "stopped by SIGTERM after the step in progress" in text, text[-4000:]
    assert newest_checkpoint(tmp_path) > newest  # the preempted run saved where it stopped
    assert not (tmp_path / "final").exists()

    code = finish(launch(tmp_path, 0, log), log)
    assert code == 0, log.read_text(errors="replace")[-4000:]
    assert_bit_identical(load_file(tmp_path / "final" / "model.safetensors"), reference)
