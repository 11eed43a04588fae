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


@pytest.mark.parametrize(
    ("accum", "save_at", "precision"),
    [(1, 20, "no"), (4, 24, "no"), (2, 18, "fp16")],
    ids=["no-accumulation", "accumulation-4", "fp16-accumulation-2"],
)
def test_resumed_run_is_bit_identical(tmp_path: Path, accum: int, save_at: int, precision: str) -> None:
    # 50 samples, batch 4: 13 batches per epoch, so save_at is in the middle of epoch 1.
    common = ["--ckpt", str(tmp_path / "ckpt"), "--accum", str(accum), "--save-at", str(save_at),
              "--mixed-precision", precision]
    run("--mode", "full", "--out", str(tmp_path / "full.safetensors"), *common)
    run("--mode", "interrupt", *common)
    run("--mode", "resume", "--out", str(tmp_path / "resumed.safetensors"), *common)

    full = load_file(tmp_path / "full.safetensors")
    resumed = load_file(tmp_path / "resumed.safetensors")
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), f"{key} differs after resume"


def test_resume_without_skipping_differs(tmp_path: Path) -> None:
    """The oracle can fail: resuming at the wrong position gives different parameters."""
    common = ["--ckpt", str(tmp_path / "ckpt"), "--save-at", "20"]
    run("--mode", "full", "--out", str(tmp_path / "full.safetensors"), *common)
    run("--mode", "interrupt", *common)
    # Pretend the checkpoint was taken 3 steps later: skips 3 batches too many.
    (tmp_path / "ckpt" / "step_20").rename(tmp_path / "ckpt" / "step_23")
    run("--mode", "resume", "--out", str(tmp_path / "resumed.safetensors"),
        "--ckpt", str(tmp_path / "ckpt"), "--save-at", "23")
    full = load_file(tmp_path / "full.safetensors")
    resumed = load_file(tmp_path / "resumed.safetensors")
    assert any(not torch.equal(full[k], resumed[k]) for k in full)
