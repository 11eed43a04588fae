"""examples/by_feature/deepspeed_with_config_support.py on the zero backend (DeepSpeed), run as a user runs it.

The DeepSpeed JSON defines the optimizer and the scheduler: the script's DummyOptim/DummyScheduler must
come back from ``prepare`` as the engine's, train, keep the best checkpoint and load it back with the best
perplexity (the script itself raises when the loaded one differs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from plait.testing import isolate_environment

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPT = EXAMPLES / "by_feature" / "deepspeed_with_config_support.py"
TEMPLATE = EXAMPLES / "deepspeed_config_templates" / "zero_stage2_config.json"
PLAIT = str(Path(sys.executable).with_name("plait"))


@pytest.fixture(scope="module", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, tmp_path_factory.mktemp("xdg"), ("PLAIT_", "SLURM_", "DS_", "ACCELERATE_"))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        yield


def _run(args: Sequence[str], cwd: Path, command: Sequence[str] = ()) -> dict[str, Any]:
    """``python script args`` (or ``command script args``); the result file's contents."""
    cwd.mkdir(parents=True, exist_ok=True)
    full = [*(command or [sys.executable]), str(SCRIPT), *args, "--output_dir", "clm",
            "--result_file", str(cwd / "result.json")]
    completed = subprocess.run(full, cwd=cwd, env=dict(os.environ), capture_output=True, text=True, timeout=600)
    if completed.returncode != 0:
        pytest.fail(f"{' '.join(full)} exited with {completed.returncode}\n{completed.stdout[-3000:]}\n"
                    f"{completed.stderr[-5000:]}")
    return json.loads((cwd / "result.json").read_text())  # type: ignore[no-any-return]


def _config(path: Path, total_num_steps: int | None = None) -> Path:
    """The template (HF Accelerate's form: "auto" for the optimizer's and the scheduler's values, which come from
    DummyOptim and DummyScheduler); with ``total_num_steps``, numbers written in their place instead."""
    config = json.loads(TEMPLATE.read_text())
    if total_num_steps is not None:
        config["optimizer"]["params"].update(lr=3e-3, weight_decay=0.0)
        config["scheduler"]["params"].update(warmup_min_lr=0, warmup_max_lr=3e-3, warmup_num_steps=2,
                                             total_num_steps=total_num_steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


def _check(result: dict[str, Any], processes: int, steps: int) -> None:
    assert result["num_processes"] == processes and result["distributed_type"] == "DEEPSPEED"
    assert result["optimizer_cls"] == "DummyOptim"  # the JSON has an optimizer block
    assert result["prepared_model"] == "DeepSpeedEngine"
    assert result["completed_steps"] == result["max_train_steps"] == steps
    assert sum(result["train_losses"][-3:]) < sum(result["train_losses"][:3])
    assert result["evaluations"][-1]["perplexity"] < result["evaluations"][0]["perplexity"]
    assert result["final_perplexity"] == result["best_metric"] == min(e["perplexity"] for e in result["evaluations"])


@pytest.mark.parametrize("processes", [1, 2])
def test_deepspeed_config_with_optimizer_and_scheduler(processes: int, tmp_path: Path) -> None:
    """2 epochs of 36 batches of 5 blocks: 72 steps on 1 process, 36 on 2 (ZeRO stage 2; HF Accelerate's form of
    the JSON, passed as DeepSpeedPlugin(hf_ds_config=...))."""
    steps = 72 // processes
    config = _config(tmp_path / "ds_config.json")
    command = () if processes == 1 else (PLAIT, "launch", "--num_processes", "2", "--cpu")
    result = _run(["--deepspeed_config_file", str(config), "--load_best_model", "--checkpointing_steps", "epoch"],
                  tmp_path / "run", command)
    _check(result, processes, steps)
    output = tmp_path / "run" / "clm"
    assert {"epoch_0", "epoch_1", "best_checkpoint", "pytorch_model.bin", "all_results.json"} <= {
        p.name for p in output.iterdir()}


def test_deepspeed_config_from_the_launch_command(tmp_path: Path) -> None:
    config = _config(tmp_path / "ds_config.json")
    result = _run([], tmp_path / "run",
                  (PLAIT, "launch", "--num_processes", "1", "--cpu", "--use_deepspeed", "--deepspeed_config_file", str(config)))
    _check(result, 1, 72)


def test_deepspeed_config_with_numbers_instead_of_auto(tmp_path: Path) -> None:
    """The optimizer's and the scheduler's values written in the JSON: DeepSpeed takes them as they are."""
    config = _config(tmp_path / "ds_config.json", total_num_steps=72)
    result = _run(["--deepspeed_config_file", str(config)], tmp_path / "run")
    _check(result, 1, 72)
