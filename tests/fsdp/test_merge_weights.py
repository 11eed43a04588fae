"""HF Accelerate's merge_fsdp_weights and `plait merge-weights`, on checkpoints of a real 2-process FSDP2 run:
the merged file holds every tensor of the model's full state dict, bit for bit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import merge_workers
import pytest
import torch
from safetensors.torch import load_file

from plait.errors import CheckpointError
from plait.testing import identical, run_processes
from plait.utils import merge_fsdp_weights

PLAIT = str(Path(sys.executable).with_name("plait"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("merge")
    rank0, rank1 = run_processes(merge_workers.sharded_save_worker, 2, args=(str(root),))
    assert all(rank0["sharded"]) and rank1["full"] == {}  # really sharded; the full weights on rank 0 only
    assert rank0["exists_after_return"] and rank1["exists_after_return"]  # the others waited for the file
    return root, rank0["full"]


def test_the_checkpoint_is_sharded_per_process(run: tuple[Path, dict[str, Any]]) -> None:
    root, _ = run
    for folder in (root / "plait" / "pytorch_model_fsdp_0", root / "accelerate" / "pytorch_model_fsdp_0"):
        assert {p.name for p in folder.iterdir()} >= {".metadata", "__0_0.distcp", "__1_0.distcp"}


@pytest.mark.parametrize("source", ["plait", "plait/pytorch_model_fsdp_0", "accelerate",
                                    "accelerate/pytorch_model_fsdp_0"])
def test_merging_gives_every_tensor_of_the_full_state_dict(run: tuple[Path, dict[str, Any]], tmp_path: Path,
                                                           source: str) -> None:
    root, full = run
    written = merge_fsdp_weights(root / source, tmp_path)
    assert written == tmp_path / "model.safetensors"
    assert identical(load_file(str(written)), full)
    written = merge_fsdp_weights(root / source, tmp_path / "bin", safe_serialization=False)
    assert written == tmp_path / "bin" / "pytorch_model.bin"
    assert identical(torch.load(written, weights_only=True), full)


def test_merging_inside_the_run_wrote_the_same(run: tuple[Path, dict[str, Any]]) -> None:
    root, full = run
    assert identical(load_file(str(root / "merged_in_run" / "model.safetensors")), full)


def test_a_corrupted_plait_checkpoint_is_refused(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(root / "plait", copy)
    shard = copy / "pytorch_model_fsdp_0" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"__0_0\.distcp is corrupted"):
        merge_fsdp_weights(copy, tmp_path / "out")
    assert not (tmp_path / "out" / "model.safetensors").exists()


def plait(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PLAIT, *args], capture_output=True, text=True, timeout=300, check=False)


def test_the_plait_merge_weights_command(run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    root, full = run
    result = plait("merge-weights", str(root / "plait"), str(tmp_path / "safe"))
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'safe' / 'model.safetensors'}" in result.stdout
    assert identical(load_file(str(tmp_path / "safe" / "model.safetensors")), full)
    # Accelerate's flags, as `accelerate merge-weights` spells them.
    copy = tmp_path / "copy"
    shutil.copytree(root / "accelerate", copy)
    result = plait("merge-weights", str(copy), str(tmp_path / "unsafe"), "--unsafe_serialization",
                   "--remove_checkpoint_dir")
    assert result.returncode == 0, result.stderr
    assert identical(torch.load(tmp_path / "unsafe" / "pytorch_model.bin", weights_only=True), full)
    assert not copy.exists() and not (tmp_path / "unsafe" / "model.safetensors").exists()
    # Not a checkpoint: exit code 1, the reason, nothing written.
    result = plait("merge-weights", str(tmp_path / "safe"), str(tmp_path / "never"))
    assert result.returncode == 1 and "is not a sharded checkpoint" in result.stderr
    assert not (tmp_path / "never").exists()
    assert "merge-weights" in plait("--help").stdout and "fsdp" in plait("--help").stdout
