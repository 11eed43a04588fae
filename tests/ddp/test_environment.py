"""How processes find each other: torchrun's and SLURM's variables, and jobs whose processes die.

* ``plait.launcher_env`` unit tests (no process started).
* ``srun python train.py``: two plain processes with only SLURM variables train to the
  same parameters as the same script under torchrun.
* A process that dies makes the job end with an error within seconds, under torchrun
  and without any launcher (``PLAIT_PROCESS_GROUP_TIMEOUT``), instead of hanging.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import ddp_workers as W
from ddp_helpers import SCRIPTS, clean_environment, free_port, identical, max_diff, start_plain, wait_all  # noqa: F401

from plait.process import ProcessEnvironment
from plait.process.launch_variables import detect, export_for_torch, first_host
from plait.testing import run_script

# --------------------------------------------------------------------------- #
# plait.launcher_env
# --------------------------------------------------------------------------- #


def test_detect_without_a_launcher_is_one_process() -> None:
    assert detect({}) == ProcessEnvironment(rank=0, world_size=1, local_rank=0, local_world_size=1)


def test_detect_torchrun() -> None:
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert detect(env) == ProcessEnvironment(rank=3, world_size=4, local_rank=1, local_world_size=2)
    # Without LOCAL_WORLD_SIZE every process is taken to be on one machine.
    assert detect({"RANK": "1", "WORLD_SIZE": "2"}) == ProcessEnvironment(1, 2, 0, 2)


def test_detect_slurm() -> None:
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4"}
    assert detect(env) == ProcessEnvironment(rank=5, world_size=8, local_rank=1, local_world_size=4)
    # SLURM_TASKS_PER_NODE (always set by srun) when --ntasks-per-node was not given.
    env = {"SLURM_PROCID": "2", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "SLURM_TASKS_PER_NODE": "4(x2)"}
    assert detect(env) == ProcessEnvironment(rank=2, world_size=8, local_rank=2, local_world_size=4)
    # A single srun task is one process.
    assert detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).world_size == 1


def test_detect_slurm_with_uneven_tasks_per_node() -> None:
    # 6 tasks on 2 nodes: 2 on node 0, 4 on node 1. Process 5 is local task 3 of node 1.
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "3", "SLURM_NODEID": "1",
           "SLURM_TASKS_PER_NODE": "2,4"}
    assert detect(env) == ProcessEnvironment(rank=5, world_size=6, local_rank=3, local_world_size=4)


def test_torchrun_variables_win_over_slurm() -> None:
    # torchrun started inside a SLURM allocation: torchrun's ranks are the real ones.
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    assert detect(env) == ProcessEnvironment(1, 2, 1, 2)


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_PROCID": "x", "SLURM_NTASKS": "2"},
        {"RANK": "0", "WORLD_SIZE": "two"},
    ],
)
def test_detect_rejects_garbage(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="launcher's environment variables are not valid"):
        detect(env)


def test_detect_rejects_a_rank_outside_the_world() -> None:
    with pytest.raises(ValueError, match="rank=2 is outside"):
        detect({"SLURM_PROCID": "2", "SLURM_NTASKS": "2"})


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node[01-04,07]", "node01"),
        ("a,b", "a"),
        ("gpu-[3-5]", "gpu-3"),
        ("single", "single"),
        ("gpu[03-05,9],cpu1", "gpu03"),
        ("node[7,2-3]", "node7"),
        ("  localhost\n", "localhost"),
    ],
)
def test_first_host(nodelist: str, host: str) -> None:
    assert first_host(nodelist) == host


def test_first_host_rejects_an_empty_list() -> None:
    with pytest.raises(ValueError, match="not a node list"):
        first_host("")


def test_export_for_torch_maps_slurm_to_torch_variables() -> None:
    environ = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "2",
               "SLURM_JOB_NODELIST": "node[07-08]"}
    export_for_torch(environ)
    assert environ["RANK"] == "3" and environ["WORLD_SIZE"] == "4"
    assert environ["LOCAL_RANK"] == "1" and environ["LOCAL_WORLD_SIZE"] == "2"
    assert environ["MASTER_ADDR"] == "node07"
    assert environ["MASTER_PORT"] == "29500"
    # The user's own MASTER_ADDR/MASTER_PORT are kept.
    environ = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "a,b",
               "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}
    export_for_torch(environ)
    assert (environ["MASTER_ADDR"], environ["MASTER_PORT"]) == ("10.0.0.1", "1234")
    # Under torchrun nothing changes.
    environ = {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    export_for_torch(environ)
    assert environ == {"RANK": "0", "WORLD_SIZE": "2", "SLURM_PROCID": "1", "SLURM_NTASKS": "2"}
    # Outside SLURM nothing changes.
    environ = {}
    export_for_torch(environ)
    assert environ == {}


# --------------------------------------------------------------------------- #
# srun python train.py: SLURM variables only, against torchrun
# --------------------------------------------------------------------------- #


def _results(directory: Path, n: int = 2) -> list[dict[str, Any]]:
    return [torch.load(directory / f"rank{r}.pt", weights_only=True) for r in range(n)]


@pytest.fixture(scope="module")
def under_torchrun(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    out = tmp_path_factory.mktemp("torchrun")
    run_script(SCRIPTS / "ddp_train.py", 2, args=[str(out)], timeout=120)
    return _results(out)


def test_srun_style_launch_trains_like_torchrun(tmp_path: Path, under_torchrun: list[dict[str, Any]]) -> None:
    port = str(free_port())
    envs = [
        {"SLURM_PROCID": str(r), "SLURM_NTASKS": "2", "SLURM_LOCALID": str(r), "SLURM_NTASKS_PER_NODE": "2",
         "SLURM_JOB_NODELIST": "localhost", "MASTER_PORT": port}
        for r in range(2)
    ]
    results = wait_all(start_plain(SCRIPTS / "ddp_train.py", envs, [str(tmp_path)]), timeout=120)
    for code, output in results:
        assert code == 0, output[-4000:]
    slurm = _results(tmp_path)
    for r, out in enumerate(slurm):
        info = out["info"]
        assert info["process_index"] == r and info["local_process_index"] == r and info["num_processes"] == 2
        assert info["backend"] == "ddp" and info["distributed_type"] == "MULTI_CPU"
        # plait exported what init_process_group reads, from the SLURM variables.
        assert (info["RANK"], info["WORLD_SIZE"], info["LOCAL_WORLD_SIZE"]) == (str(r), "2", "2")
        assert info["MASTER_ADDR"] == "localhost"
        assert info["TORCHELASTIC_RUN_ID"] is None  # no launcher involved
        assert under_torchrun[r]["info"]["TORCHELASTIC_RUN_ID"] is not None
        # Bit for bit the parameters of the torchrun run.
        assert identical(out["params"], under_torchrun[r]["params"])
    reference = W.reference_sgd(W.make_model(), batch_size=16)
    assert max_diff(slurm[0]["params"], reference) < 1e-6


# --------------------------------------------------------------------------- #
# a process that dies
# --------------------------------------------------------------------------- #


def test_dead_rank_ends_a_torchrun_job_with_an_error() -> None:
    start = time.monotonic()
    result = run_script(SCRIPTS / "ddp_dying_rank.py", 2, check=False, timeout=90)
    elapsed = time.monotonic() - start
    assert result.returncode != 0
    assert "UNREACHABLE" not in result.stdout
    assert elapsed < 60, f"the job took {elapsed:.0f} s to fail"


def test_dead_rank_without_a_launcher_fails_the_collective_within_the_timeout() -> None:
    port = str(free_port())
    envs = [
        {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
         "PLAIT_PROCESS_GROUP_TIMEOUT": "5"}
        for r in range(2)
    ]
    start = time.monotonic()
    processes = start_plain(SCRIPTS / "ddp_dying_rank.py", envs, [])
    (code0, output0), (code1, _) = wait_all(processes, timeout=60)
    elapsed = time.monotonic() - start
    assert code1 == 1
    assert "process 0 enters a collective" in output0, output0[-3000:]
    assert code0 != 0, output0[-3000:]
    assert "UNREACHABLE" not in output0
    assert elapsed < 30, f"process 0 took {elapsed:.0f} s to fail"


def test_stuck_rank_without_a_launcher_fails_the_collective_after_the_timeout() -> None:
    """Process 1 is alive but never joins: PLAIT_PROCESS_GROUP_TIMEOUT=3 must end process 0's wait."""
    port = str(free_port())
    envs = [
        {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
         "PLAIT_PROCESS_GROUP_TIMEOUT": "3"}
        for r in range(2)
    ]
    processes = start_plain(SCRIPTS / "ddp_dying_rank.py", envs, ["stall"])
    try:
        start = time.monotonic()
        [(code0, output0)] = wait_all(processes[:1], timeout=60)
        elapsed = time.monotonic() - start
    finally:
        processes[1].kill()
        processes[1].communicate()
    assert "process 0 enters a collective" in output0, output0[-3000:]
    assert code0 != 0, output0[-3000:]
    assert "UNREACHABLE" not in output0
    assert elapsed < 30, f"process 0 took {elapsed:.0f} s to fail"
    assert "timed out" in output0.lower() or "timeout" in output0.lower(), output0[-3000:]
