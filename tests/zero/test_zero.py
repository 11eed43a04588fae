"""The zero backend on 2 real processes (gloo, fp32): every ZeRO stage trains exactly like ddp.

One launch for the whole module (about 20 s): the same HF Accelerate training loop
(AdamW, a StepLR scheduler, 20 optimizer steps) runs under ddp and under zero at
stages 1, 2 and 3, plain, with gradient accumulation, and with clipping; ddp is
the oracle. The launch also exercises the exports and the bad inputs that need
an Accelerator.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import zero_workers as W
from zero_helpers import clean_environment, identical, max_diff  # noqa: F401

from plait.testing import run_processes

STAGES = (1, 2, 3)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return run_processes(W.parity_worker, 2, args=(str(tmp_path_factory.mktemp("parity")),))


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    return run_processes(W.single_worker, 1)[0]


def reference(batch: int, scheduler_steps: int) -> dict[str, torch.Tensor]:
    """Plain torch on one process: the same model, data, AdamW and StepLR, global batches of ``batch``."""
    model = W.make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=W.LR, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.8)
    x, y = W.make_data(W.STEPS * W.BATCH * 2)
    for step in range(W.STEPS):
        rows = slice(step * batch, (step + 1) * batch)
        torch.nn.functional.mse_loss(model(x[rows]), y[rows]).backward()
        optimizer.step()
        for _ in range(scheduler_steps):
            scheduler.step()
        optimizer.zero_grad()
    return W.params(model.state_dict())


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("variant", ["plain", "accum", "clip"])
def test_each_stage_trains_like_ddp(runs: list[dict[str, Any]], stage: int, variant: str) -> None:
    rank0, rank1 = runs
    zero, ddp = rank0[f"zero{stage}/{variant}"], rank0[f"ddp/{variant}"]
    assert zero["type"] == "DeepSpeedEngine" and ddp["type"] == "DistributedDataParallel"
    # get_state_dict gives the full model on every process (ZeRO-3 partitions gathered).
    assert identical(zero["params"], rank1[f"zero{stage}/{variant}"]["params"])
    assert max_diff(zero["params"], ddp["params"]) < TOLERANCE
    # The oracle can fail: training moved the weights far more than the tolerance...
    assert max_diff(zero["params"], W.params(W.make_model().state_dict())) > 1e-2
    # ...and the variants differ from each other by far more than the tolerance.
    other = "accum" if variant != "accum" else "plain"
    assert max_diff(zero["params"], rank0[f"ddp/{other}"]["params"]) > 1e-3
    # The scheduler ran the same schedule (stepped once per process per optimizer step, as under ddp).
    assert zero["lr"] == pytest.approx(ddp["lr"], rel=1e-12)


@pytest.mark.parametrize("stage", STAGES)
def test_engine_steps_exactly_when_sync_gradients(runs: list[dict[str, Any]], stage: int) -> None:
    run = runs[0][f"zero{stage}/accum"]
    assert run["sync"] == runs[0]["ddp/accum"]["sync"]
    assert run["sync"][:6] == [False, True, False, True, False, True]
    # DeepSpeed's own step counter advances on exactly the micro-steps where sync_gradients is True.
    expected, steps = [], 0
    for sync in run["sync"]:
        steps += sync
        expected.append(steps)
    assert run["engine_steps"] == expected
    assert run["engine_steps"][-1] == W.STEPS


@pytest.mark.parametrize("stage", STAGES)
def test_clip_grad_norm_maps_to_the_engine(runs: list[dict[str, Any]], stage: int) -> None:
    rank0 = runs[0]
    # The norm returned before the step is the global norm over every partition, as ddp's.
    ddp_norms, zero_norms = rank0["ddp/clip"]["norms"], rank0[f"zero{stage}/clip"]["norms"]
    assert len(zero_norms) == W.STEPS
    assert zero_norms == pytest.approx(ddp_norms, rel=1e-5)
    assert sum(n > 0.3 for n in ddp_norms) > W.STEPS // 2  # clipping really happened
    # The gradient_clipping option clips in every step like clip_grad_norm_ does.
    assert max_diff(rank0[f"zero{stage}/clip-option"]["params"], rank0["ddp/clip"]["params"]) < TOLERANCE


def test_no_clipping_unless_asked(runs: list[dict[str, Any]]) -> None:
    rank0 = runs[0]
    # Gradient norms above 1 occur, so DeepSpeed's own default (clip at 1.0) would have changed the result;
    # the default zero run matches the unclipped ddp run, and a run clipped at 1.0 does not.
    assert max(rank0["ddp/clip"]["norms"]) > 1.0
    assert rank0["zero2/plain"]["clipping"] == 0.0
    assert max_diff(rank0["zero2/plain"]["params"], rank0["ddp/plain"]["params"]) < TOLERANCE
    assert max_diff(rank0["zero2/clip-at-1"]["params"], rank0["ddp/plain"]["params"]) > 1e-4


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_runs_the_engine_in_bf16_close_to_ddp_autocast(runs: list[dict[str, Any]], stage: int) -> None:
    rank0 = runs[0]
    zero, ddp = rank0[f"zero{stage}/bf16"], rank0["ddp/bf16"]
    # DeepSpeed keeps the model in bf16 (fp32 master weights in its optimizer); ddp keeps fp32 weights under
    # autocast: the two agree to bf16 rounding, and both trained.
    assert zero["dtype"] == "torch.bfloat16" and ddp["dtype"] == "torch.float32"
    assert max_diff(zero["params"], ddp["params"]) < 3e-2
    assert max_diff(zero["params"], W.params(W.make_model().state_dict())) > 0.1
    assert zero["lr"] == ddp["lr"]


def test_zero3_init_builds_the_model_partitioned(runs: list[dict[str, Any]]) -> None:
    run = runs[0]["zero3/init"]
    full = sum(p.numel() for p in W.make_model().parameters())
    assert run["built_numel"] < full  # each process held only its partition from construction on
    assert max_diff(run["params"], runs[0]["ddp/plain"]["params"]) < TOLERANCE


def test_exports_are_full_unwrapped_weights(runs: list[dict[str, Any]]) -> None:
    rank0, rank1 = runs
    assert rank0["unwrap_is_original"] and rank1["unwrap_is_original"]
    assert rank0["distributed_type"] == "DEEPSPEED"
    # ZeRO-3 holds about half the parameters on each process...
    assert rank0["full_numel"] == sum(p.numel() for p in W.make_model().parameters())
    assert rank0["local_numel"] < rank0["full_numel"]
    # ...but get_state_dict and save_model give every full tensor, under the user's own names.
    expected = W.make_model().state_dict()
    assert rank0["state_keys"] == sorted(expected)
    assert rank0["state_shapes"] == {k: tuple(v.shape) for k, v in expected.items()}
    assert rank0["export_files"] == ["model.safetensors"]
    assert identical(rank0["export"], rank0["initial"])


def test_bad_calls_are_named(runs: list[dict[str, Any]]) -> None:
    rank0 = runs[0]
    assert "clip_grad_value_(1.0) is not supported by backend 'zero'" in rank0["clip_value_error"]
    assert "clip_grad_norm_" in rank0["clip_value_error"]
    assert "accelerator.prepare(model, optimizer" in rank0["prepare_model_error"]


def test_deepspeed_json_contradicting_the_accelerator_names_both(runs: list[dict[str, Any]]) -> None:
    error = runs[0]["json_conflict_error"]
    assert error.startswith("ConfigError:")
    assert "gradient_accumulation_steps=4" in error and "Accelerator(gradient_accumulation_steps=...) is 2" in error
    assert '"auto"' in error


def test_auto_values_are_filled_from_the_accelerator_and_dataloader(runs: list[dict[str, Any]]) -> None:
    # Batch 4 per process, accumulation 2, 2 processes; clipping stays off.
    assert runs[0]["auto_filled"] == {"micro": 4, "gas": 2, "train_batch_size": 16, "stage": 1, "clipping": 0.0}
    # A JSON accumulation over the Accelerator's default: the Accelerator adopts it (and accumulate() follows it).
    assert runs[0]["adopted_accumulation"] == (3, 3)


def test_ddp_oracle_is_plain_torch(runs: list[dict[str, Any]]) -> None:
    """ddp with 2 processes of 4 matches one process of plain torch with batches of 8 (the scheduler stepping
    once per process), so zero == ddp is a real oracle."""
    assert max_diff(runs[0]["ddp/plain"]["params"], reference(2 * W.BATCH, scheduler_steps=2)) < 1e-6


@pytest.mark.parametrize("stage", [1, 3])
def test_one_process_matches_plain_torch(single: dict[str, Any], stage: int) -> None:
    assert single["num_processes"] == 1
    run = single[f"zero{stage}"]
    assert run["type"] == "DeepSpeedEngine"
    assert max_diff(run["params"], reference(2 * W.BATCH, scheduler_steps=1)) < TOLERANCE
    # The group of one DeepSpeed needed is torn down by end_training.
    assert single["group_before_end"] and not single["group_after_end"]


def test_plain_python_without_a_launcher_runs_as_a_group_of_one(tmp_path: Path) -> None:
    import json
    import os
    import subprocess

    from plait.testing import LAUNCHER_VARIABLES

    out = tmp_path / "run.json"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "scripts" / "plain_python.py"), str(out)],
                            env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr[-4000:]
    run = json.loads(out.read_text(encoding="utf-8"))
    assert run["type"] == "DeepSpeedEngine"
    params = {name: torch.tensor(value) for name, value in run["params"].items()}
    assert max_diff(params, reference(2 * W.BATCH, scheduler_steps=1)) < TOLERANCE
