"""Sharded and full checkpoints on 2 real processes: exact resume, 2 -> 1 process, exports, merge-weights.

One 2-process launch saves, resumes and exports; the 1-process loads run in this test
process (one process: no process group, the model is not wrapped, DCP reads alone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsdp_workers as W
import pytest
from click.testing import CliRunner
from safetensors.torch import load_file

from plait.errors import CheckpointError
from plait.testing import identical, max_diff, run_processes


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("checkpoints")
    return root, run_processes(W.checkpoint_worker, 2, args=(str(root),))


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_resume_is_exactly_the_uninterrupted_run(saved: tuple[Path, list[dict[str, Any]]], kind: str) -> None:
    _, (rank0, _) = saved
    assert identical(rank0[f"{kind}_loaded"], rank0[f"{kind}_at_10"])  # a fresh model (other seed) got the weights
    assert identical(rank0[f"{kind}_resumed"], rank0["uninterrupted"])  # ...and AdamW's state: same 10 next steps
    assert max_diff(rank0[f"{kind}_at_10"], rank0["uninterrupted"]) > 1e-3  # (the last 10 steps changed things)


def test_sharded_state_is_dcp_shards_per_process_in_the_manifest(saved: tuple[Path, list[dict[str, Any]]]) -> None:
    root, (rank0, _) = saved
    files = set(rank0["sharded_files"])
    for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert {f"{folder}/.metadata", f"{folder}/__0_0.distcp", f"{folder}/__1_0.distcp"} <= files
    assert "optimizer_0.pt" in files  # param groups: loaded with weights_only=True, never given to DCP's pickle
    assert "model.safetensors" not in files
    manifest = json.loads((root / "sharded" / "plait_checkpoint.json").read_text())
    assert manifest["metadata"]["backend"] == "fsdp" and manifest["metadata"]["num_processes"] == 2
    assert {"model.safetensors", "optimizer.safetensors", "optimizer.pt"} <= set(rank0["full_files"])
    assert not any("distcp" in f for f in rank0["full_files"])


def test_full_state_is_consolidated_safetensors(saved: tuple[Path, list[dict[str, Any]]]) -> None:
    root, (rank0, _) = saved
    assert identical(load_file(str(root / "full" / "model.safetensors")), rank0["full_at_10"])


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_a_2_process_checkpoint_loads_into_1_process(saved: tuple[Path, list[dict[str, Any]]], kind: str) -> None:
    root, (rank0, _) = saved
    one = W.load_in_one_process(str(root / kind), steps=10)
    assert one["num_processes"] == 1
    assert identical(one["loaded"], rank0[f"{kind}_at_10"])
    # One process with the whole global batch continues as the two processes did: the optimizer state
    # was resharded from 2 shards into 1 too.
    assert max_diff(one["resumed"], rank0["uninterrupted"]) < 1e-5


def test_save_model_writes_consolidated_unwrapped_safetensors(saved: tuple[Path, list[dict[str, Any]]]) -> None:
    root, (rank0, _) = saved
    assert sorted(p.name for p in (root / "export").iterdir()) == ["model.safetensors"]
    exported = load_file(str(root / "export" / "model.safetensors"))
    assert identical(exported, rank0["export_expected"])
    assert set(exported) == set(W.make("transformer").state_dict())  # the plain module's names, no wrapper prefix


def test_mismatching_shapes_name_the_first_key(saved: tuple[Path, list[dict[str, Any]]]) -> None:
    _, ranks = saved
    for rank in ranks:
        error = rank["shape_error"]
        assert error.startswith("CheckpointError")
        assert "'embed.weight'" in error and "(16, 4)" in error and "(32, 4)" in error


def test_merge_weights_function_and_command(saved: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    from plait_cli.main import build_cli
    from plait_fsdp.merge import merge_weights

    root, (rank0, _) = saved
    written = merge_weights(root / "sharded", tmp_path / "merged.safetensors")
    assert identical(load_file(str(written)), rank0["sharded_at_10"])

    cli = build_cli()  # the real `plait` group: plait-fsdp adds `plait fsdp` through its entry point
    runner = CliRunner()
    result = runner.invoke(cli, ["fsdp", "merge-weights", str(root / "sharded"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert identical(load_file(str(tmp_path / "out" / "model.safetensors")), rank0["sharded_at_10"])
    # The DCP directory itself works too; a full checkpoint is already one file.
    result = runner.invoke(cli, ["fsdp", "merge-weights", str(root / "sharded" / "pytorch_model_fsdp_0"),
                                 str(tmp_path / "direct.safetensors")])
    assert result.exit_code == 0, result.output
    assert identical(load_file(str(tmp_path / "direct.safetensors")), rank0["sharded_at_10"])
    result = runner.invoke(cli, ["fsdp", "merge-weights", str(root / "full"), str(tmp_path / "full.safetensors")])
    assert result.exit_code == 0, result.output
    assert identical(load_file(str(tmp_path / "full.safetensors")), rank0["full_at_10"])
    # Not a checkpoint: a clear error, exit code 1.
    result = runner.invoke(cli, ["fsdp", "merge-weights", str(tmp_path), str(tmp_path / "x.safetensors")])
    assert result.exit_code == 1
    assert "is not a sharded checkpoint" in result.output


def test_merge_weights_refuses_a_corrupted_checkpoint(saved: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    import shutil

    from plait_fsdp.merge import merge_weights

    root, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(root / "sharded", copy)
    shard = copy / "pytorch_model_fsdp_0" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp is corrupted"):
        merge_weights(copy, tmp_path / "m.safetensors")
