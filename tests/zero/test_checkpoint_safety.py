"""Checkpoints of the zero backend cannot run code or be half-loaded (2 real processes, ZeRO stage 2).

One launch (``safety_workers.safety_worker``) saves AdamW training, crafts copies whose manifests list the
crafted files with matching checksums, and loads each into engines that already trained a step: every
refusal is a ``CheckpointError`` naming the file, on every process, and no tensor in memory changed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import safety_workers as S
from zero_helpers import clean_environment, identical  # noqa: F401

from plait.testing import assert_refused, run_processes


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("zero_safety")
    marker = root / "payload_ran"
    return root, marker, run_processes(S.safety_worker, 2, args=(str(root), str(marker)))


@pytest.mark.parametrize("case,file", [("payload_partition", S.PARTITION_1), ("payload_module", S.MODULE_STATES),
                                       ("sgd_payload_module3", S.MODULE_STATES_1_STAGE3)])
def test_a_crafted_deepspeed_file_is_refused_and_its_payload_never_runs(
    launched: tuple[Path, Path, list[dict[str, Any]]], case: str, file: str
) -> None:
    import torch

    root, marker, ranks = launched
    folder = root / case.removeprefix("sgd_")
    assert_refused(ranks, case, str(folder / file), "weights_only")
    if file != S.MODULE_STATES:  # only process 1 reads it: process 0 refuses because process 1 did
        assert "process 1 refused" in ranks[0][case]["error"]
    assert not marker.exists()
    # The oracle can fail: DeepSpeed's own loader (weights_only=False) runs the payload of that very file.
    torch.load(folder / file, weights_only=False)
    assert marker.exists()
    marker.unlink()


def test_the_good_checkpoint_still_loads(launched: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    _, _, ranks = launched
    for rank in ranks:
        assert rank["good"]["error"] is None
        assert not rank["good"]["unchanged"]  # loading does change memory: "unchanged" above means something
        assert identical(rank["good_loaded"], rank["saved"])


@pytest.mark.parametrize("case", ["sgd_adamw", "sgd_adamw3"])
def test_adamw_state_into_sgd_is_refused_with_nothing_changed(
    launched: tuple[Path, Path, list[dict[str, Any]]], case: str
) -> None:
    _, _, ranks = launched
    assert_refused(ranks, case, "torch.optim.adamw.AdamW", "torch.optim.sgd.SGD", "plait_zero.json")
    if case == "sgd_adamw3":  # what "unchanged" compared: each process's ZeRO-3 partitions, not empty placeholders
        assert all(rank["stage3_partition_numel"] > 0 for rank in ranks)


def test_without_a_recorded_class_the_state_keys_refuse_it(launched: tuple[Path, Path, list[dict[str, Any]]]) -> None:
    _, _, ranks = launched
    assert_refused(ranks, "sgd_unrecorded_class", "'exp_avg'", "momentum_buffer")
