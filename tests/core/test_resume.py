"""Exact resume: a run interrupted mid-epoch and resumed in a fresh process ends bit-identical.

The protocol is HF Accelerate's (load_state, skip_first_batches for the interrupted
epoch, plain iteration afterwards), on a shuffled loader, with dropout, a
scheduler, a dataset drawing from the global RNG, and python/numpy randomness.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "scripts" / "resume_run.py"


def run(*args: str) -> None:
    subprocess.run([sys.executable, str(SCRIPT), *args], check=True, timeout=300)


def assert_identical(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), f"{key} differs after resume"


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run and an interrupted one (no accumulation), shared by the tests below."""
    root = tmp_path_factory.mktemp("resume")
    run("--mode", "full", "--out", str(root / "full.safetensors"), "--ckpt", str(root / "ckpt"), "--save-at", "20")
    run("--mode", "interrupt", "--ckpt", str(root / "ckpt"), "--save-at", "20")
    return root


def test_resumed_run_is_bit_identical(interrupted: Path, tmp_path: Path) -> None:
    # 50 samples, batch 4: 13 batches per epoch, so step 20 is in the middle of epoch 1.
    run("--mode", "resume", "--out", str(tmp_path / "resumed.safetensors"),
        "--ckpt", str(interrupted / "ckpt"), "--save-at", "20")
    assert_identical(interrupted / "full.safetensors", tmp_path / "resumed.safetensors")


@pytest.mark.parametrize(
    ("accum", "save_at", "precision"),
    [(4, 24, "no"), (2, 18, "fp16")],
    ids=["accumulation-4", "fp16-accumulation-2"],
)
def test_resumed_run_with_accumulation_is_bit_identical(tmp_path: Path, accum: int, save_at: int, precision: str) -> None:
    # Both checkpoints fall in the middle of an accumulation cycle (HF Accelerate's examples save every
    # N batches), so the gradients accumulated so far are part of what must be restored.
    common = ["--ckpt", str(tmp_path / "ckpt"), "--accum", str(accum), "--save-at", str(save_at),
              "--mixed-precision", precision]
    run("--mode", "full", "--out", str(tmp_path / "full.safetensors"), *common)
    run("--mode", "interrupt", *common)
    run("--mode", "resume", "--out", str(tmp_path / "resumed.safetensors"), *common)
    assert_identical(tmp_path / "full.safetensors", tmp_path / "resumed.safetensors")


def test_resume_at_the_wrong_position_differs(interrupted: Path, tmp_path: Path) -> None:
    """The oracle can fail: resuming 3 batches too late gives different parameters."""
    import shutil

    shutil.copytree(interrupted / "ckpt" / "step_20", tmp_path / "ckpt" / "step_23")
    run("--mode", "resume", "--out", str(tmp_path / "resumed.safetensors"),
        "--ckpt", str(tmp_path / "ckpt"), "--save-at", "23")
    full = load_file(interrupted / "full.safetensors")
    resumed = load_file(tmp_path / "resumed.safetensors")
    assert any(not torch.equal(full[k], resumed[k]) for k in full)
