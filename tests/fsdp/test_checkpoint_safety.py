"""Sharded checkpoints of the fsdp backend cannot run code, read unlisted files, or be half-loaded.

One 2-process launch (``safety_workers.safety_worker``) saves sharded and full checkpoints of AdamW
training, crafts copies of them whose manifests list the crafted files with matching checksums (only
the content is hostile), and loads each into models and optimizers that already trained: every
refusal is a ``CheckpointError`` naming the file, and every tensor in memory is as it was.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import safety_workers as S
from safetensors.torch import load_file

from plait.errors import CheckpointError
from plait.testing import assert_refused, identical, max_diff, run_processes


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("safety")
    marker = root / "payload_ran"
    return root, marker, run_processes(S.safety_worker, 2, args=(str(root), str(marker)))


@pytest.mark.parametrize("case,file", [("payload_model", S.MODEL_METADATA), ("payload_optimizer", S.OPTIMIZER_METADATA)])
def test_a_crafted_metadata_is_refused_and_its_payload_never_runs(
    launched: tuple[Path, Path, list[dict[str, Any]]], case: str, file: str
) -> None:
    root, marker, ranks = launched
    assert_refused(ranks, case, str(root / case / file), "builtins.exec")
    assert not marker.exists()
    # The oracle can fail: DCP's own reader runs the payload of that very file.
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    FileSystemReader(str((root / case / file).parent)).read_metadata()
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("inside", [".", "pytorch_model_fsdp_0"])
def test_merge_weights_refuses_a_crafted_metadata_too(
    launched: tuple[Path, Path, list[dict[str, Any]]], tmp_path: Path, inside: str
) -> None:
    from plait_fsdp.merge import merge_weights

    root, marker, (rank0, _) = launched
    with pytest.raises(CheckpointError, match=re.escape(str(root / "payload_model" / S.MODEL_METADATA))):
        merge_weights(root / "payload_model" / inside, tmp_path / "merged.safetensors")
    assert not marker.exists() and not (tmp_path / "merged.safetensors").exists()
    with pytest.raises(CheckpointError, match=r"__7_0\.distcp"):  # a shard beside the listed ones
        merge_weights(root / "unlisted_shard", tmp_path / "merged.safetensors")
    assert identical(load_file(str(merge_weights(root / "sharded" / inside, tmp_path))), rank0["sharded_saved"])


def test_a_bytes_entry_is_refused(launched: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    root, _, ranks = launched
    assert_refused(ranks, "bytes_entry", str(root / "bytes_entry" / S.MODEL_METADATA), "'net.1.weight'", "not a tensor")


def test_a_shard_the_manifest_does_not_list_is_refused(launched: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    root, _, ranks = launched
    assert_refused(ranks, "unlisted_shard", "'__7_0.distcp'", "manifest")
    assert (root / "unlisted_shard" / "pytorch_model_fsdp_0" / "__7_0.distcp").is_file()  # it was there to read


def test_the_good_checkpoint_still_loads(launched: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    _, _, (rank0, rank1) = launched
    assert rank0["good"]["error"] is None and rank1["good"]["error"] is None
    assert not rank0["good"]["unchanged"]  # loading does change memory: "unchanged" above means something
    assert identical(rank0["good_loaded"], rank0["sharded_saved"])
    assert max_diff(rank0["sharded_saved"], rank0["full_saved"]) == 0  # same seed, same steps


@pytest.mark.parametrize("kind", ["sharded", "full"])
def test_adamw_state_into_sgd_is_refused_with_nothing_changed(
    launched: tuple[Path, Path, list[dict[str, Any]]], kind: str
) -> None:
    _, _, ranks = launched
    assert_refused(ranks, f"sgd_{kind}", "torch.optim.adamw.AdamW", "torch.optim.sgd.SGD")


def test_without_a_recorded_class_the_state_keys_refuse_it(launched: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    _, _, ranks = launched
    assert_refused(ranks, "sgd_unrecorded_class", "'exp_avg'", "momentum_buffer")


def test_two_parameter_groups_against_one_is_refused_with_nothing_changed(
    launched: tuple[Path, Path, list[dict[str, Any]]]
) -> None:
    _, _, ranks = launched
    assert_refused(ranks, "two_groups", "1 parameter groups", "has 2")
