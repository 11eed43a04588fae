"""examples/by_feature/fsdp_with_peak_mem_tracking.py and megatron_lm_gpt_pretraining.py on the fsdp backend,
run as a user runs them (``python script.py``, ``plait launch --num_processes 2 --cpu script.py``).

Two processes with batch 8 must end with the parameters of one process with batch 16; a run resumed from a
sharded checkpoint must end bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

BY_FEATURE = Path(__file__).resolve().parents[2] / "examples" / "by_feature"
PLAIT = str(Path(sys.executable).with_name("plait"))


def _run(script: str, args: Sequence[str], cwd: Path, processes: int = 1, launch: Sequence[str] = (),
         check: bool = True) -> subprocess.CompletedProcess[str]:
    cwd.mkdir(parents=True, exist_ok=True)
    path = str(BY_FEATURE / script)
    command = ([sys.executable, path, *args] if processes == 1 and not launch else
               [PLAIT, "launch", "--num_processes", str(processes), "--cpu", *launch, path, *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and completed.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {completed.returncode}\n{completed.stdout[-3000:]}\n"
                    f"{completed.stderr[-5000:]}")
    return completed


def _result(script: str, args: Sequence[str], cwd: Path, processes: int = 1, launch: Sequence[str] = ()) -> dict[str, Any]:
    _run(script, [*args, "--result_file", str(cwd / "result.json")], cwd, processes, launch)
    return json.loads((cwd / "result.json").read_text())  # type: ignore[no-any-return]


def _max_difference(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    assert a.keys() == b.keys()
    return max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in a)


def _went_down(losses: Sequence[float], window: int = 3) -> bool:
    return sum(losses[-window:]) / window < sum(losses[:window]) / window


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("by_feature_fsdp")


@pytest.fixture(scope="module")
def one_process(workdir: Path) -> dict[str, Any]:
    return _result("fsdp_with_peak_mem_tracking.py", ["--batch_size", "16"], workdir / "one")


@pytest.fixture(scope="module")
def two_processes(workdir: Path) -> dict[str, Any]:
    """2 x 8 samples, 16 steps per epoch, saved every 10 steps (sharded, through torch.distributed.checkpoint)."""
    return _result("fsdp_with_peak_mem_tracking.py", ["--batch_size", "8", "--checkpointing_steps", "10",
                                                      "--output_dir", "ckpt"], workdir / "two", processes=2)


def test_fsdp_example_trains_and_tracks_memory(one_process: dict[str, Any], two_processes: dict[str, Any]) -> None:
    for result in (one_process, two_processes):
        assert result["distributed_type"] == "FSDP"
        assert _went_down(result["train_losses"])
        assert result["epochs"][-1]["accuracy"] > 0.8 and result["epochs"][-1]["count"] == 101
        for epoch in result["epochs"]:
            assert epoch["train_memory"]["cpu_peak_bytes"] > 0 and epoch["eval_memory"]["cpu_peak_bytes"] > 0
    assert two_processes["prepared_model"].startswith("FSDP")  # FSDP2's fully_shard class


def test_two_fsdp_processes_match_one_with_the_doubled_batch(one_process: dict[str, Any],
                                                             two_processes: dict[str, Any]) -> None:
    assert two_processes["overall_step"] == one_process["overall_step"] == 32
    assert _max_difference(one_process["parameters"], two_processes["parameters"]) < 1e-5
    assert [e["accuracy"] for e in two_processes["epochs"]] == [e["accuracy"] for e in one_process["epochs"]]


def test_fsdp_example_resumes_from_a_sharded_checkpoint_exactly(two_processes: dict[str, Any], workdir: Path) -> None:
    assert sorted(p.name for p in (workdir / "two" / "ckpt").iterdir()) == ["step_10", "step_20", "step_30"]
    resumed = _result("fsdp_with_peak_mem_tracking.py", [
        "--batch_size", "8", "--output_dir", "more", "--resume_from_checkpoint", str(workdir / "two" / "ckpt" / "step_20"),
    ], workdir / "resumed", processes=2)
    assert resumed["overall_step"] == 32
    assert resumed["train_losses"] == two_processes["train_losses"][20:]
    assert resumed["parameters"] == two_processes["parameters"]


def test_fsdp_example_with_accelerates_state_dict_configs(workdir: Path) -> None:
    result = _result("fsdp_with_peak_mem_tracking.py", ["--batch_size", "16", "--accelerate_state_dict_configs",
                                                        "--num_epochs", "1"], workdir / "configs")
    assert result["distributed_type"] == "FSDP"


def test_gpt_pretraining_on_fsdp(workdir: Path) -> None:
    """megatron_lm_gpt_pretraining.py: Megatron-LM is refused, the same loop runs sharded."""
    result = _result("megatron_lm_gpt_pretraining.py", ["--output_dir", "gpt", "--checkpointing_steps", "epoch"],
                     workdir / "gpt", processes=2, launch=["--backend", "fsdp"])
    assert "MegatronLMPlugin is not supported by plait" in result["megatron_lm"]
    assert result["distributed_type"] == "FSDP" and result["num_processes"] == 2
    assert _went_down(result["train_losses"])
    assert result["evaluations"][-1]["perplexity"] < result["evaluations"][0]["perplexity"]
    # get_state_dict gathered the full parameters from the shards.
    assert result["parameters"]["lm_head.weight"] and len(result["parameters"]["embed_tokens.weight"]) == 48 * 32
    output = workdir / "gpt" / "gpt"
    assert {"epoch_0", "epoch_1", "pytorch_model.bin", "all_results.json"} <= {p.name for p in output.iterdir()}
