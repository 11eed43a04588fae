"""The xla backend on XLA's CPU device: numbers against eager PyTorch, graphs compiled, SPMD over two
devices, one process per device under ``plait launch``, checkpoints resumed in a fresh process.

Each worker starts torch_xla once (10-20 s) and runs several checks; the tests read its numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch_xla", reason="the xla tests need torch_xla (the nox session `xla` installs it)")

from xla_helpers import WORKERS, plait_command, run, worker

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return worker(tmp_path_factory.mktemp("single"), "single")["0"]


@pytest.fixture(scope="module")
def spmd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return worker(tmp_path_factory.mktemp("spmd"), "spmd", launch=["--backend", "xla", "--xla-spmd"],
                  CPU_NUM_DEVICES="2")["0"]


# ---------------------------------------------------------------------------- one device
def test_one_device_matches_eager_cpu_after_20_sgd_steps(single: dict[str, Any]) -> None:
    assert single["device"] == "xla:0" and single["distributed_type"] == "XLA" and single["num_processes"] == 1
    assert single["vs_eager"] < 1e-5


def test_get_state_dict_returns_cpu_tensors(single: dict[str, Any]) -> None:
    assert single["state_dict_devices"] == ["cpu"]


def test_no_graph_is_compiled_after_warm_up(single: dict[str, Any]) -> None:
    graphs = single["graphs"]
    assert len(graphs) == 20 and graphs[2:] == [graphs[2]] * 18, graphs


def test_accumulation_of_4_matches_a_4x_batch_and_compiles_once(single: dict[str, Any]) -> None:
    assert single["accumulation_vs_4x_batch"] < 1e-5
    graphs = single["accumulation_graphs"]  # after each optimizer step: no graph per micro-step
    assert len(graphs) == 10 and graphs[2:] == [graphs[2]] * 8 and graphs[2] <= 4, graphs


def test_gather_for_metrics_returns_exactly_the_samples(single: dict[str, Any], spmd: dict[str, Any]) -> None:
    assert single["gathered_equal"] and spmd["gathered_equal"]


def test_clip_grad_norm_returns_and_clips_to_eager_norm(single: dict[str, Any]) -> None:
    norm, expected = single["clip_norm"]
    assert norm == pytest.approx(expected, rel=1e-5) and norm > 0.5
    assert single["clipped_grads"] < 1e-6


def test_save_model_writes_the_weights_under_the_users_names(single: dict[str, Any]) -> None:
    same_keys, difference = single["save_model"]
    assert same_keys and difference == 0.0


def test_bf16_is_autocast_on_the_xla_device(single: dict[str, Any]) -> None:
    inside, output, difference = single["bf16"]
    assert inside == "torch.bfloat16" and output == "torch.float32"
    assert 0 < difference < 0.05  # bf16 rounding, not a different model


def test_fp16_is_refused_naming_what_xla_supports(single: dict[str, Any]) -> None:
    message = single["fp16_error"]
    assert message is not None and "'fp16'" in message and "'bf16'" in message and "'no'" in message


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resumed_in_a_fresh_process_is_bit_identical(tmp_path: Path, accumulation: int) -> None:
    """Saved after batch 5 of 12 (with accumulation of 2, between two micro-steps), resumed in a fresh process."""
    checkpoint = str(tmp_path / "checkpoint")
    uninterrupted = worker(tmp_path, "save", checkpoint, str(accumulation))["0"]
    resumed = worker(tmp_path, "resume", checkpoint, str(accumulation))["0"]
    assert "model.safetensors" in uninterrupted["files"] and "plait_checkpoint.json" in uninterrupted["files"]
    assert ("gradients.safetensors" in uninterrupted["files"]) == (accumulation == 2)
    assert uninterrupted["steps"] == resumed["steps"] == 12
    assert resumed["state"] == uninterrupted["state"]  # exact floats, not approximately


# ---------------------------------------------------------------------------- SPMD
def test_spmd_over_two_devices_matches_eager_batch_16(spmd: dict[str, Any]) -> None:
    assert spmd["spmd"] and spmd["devices"] == 2 and spmd["num_processes"] == 1
    assert spmd["vs_eager_batch_16"] < 1e-5
    graphs = spmd["graphs"]
    assert graphs[2:] == [graphs[2]] * (len(graphs) - 2), graphs


def test_spmd_batches_are_split_over_the_mesh(spmd: dict[str, Any]) -> None:
    assert spmd["batch_shardings"] and all(s == "{devices=[2,1]0,1}" for s in spmd["batch_shardings"])


def test_fsdp_v2_shards_parameters_and_matches_eager(spmd: dict[str, Any]) -> None:
    assert "fsdp_error" not in spmd, spmd.get("fsdp_error")
    assert spmd["fsdp_vs_eager_batch_16"] < 1e-5
    assert any(s.startswith("{devices=[2") for s in spmd["fsdp_parameter_shardings"]), spmd["fsdp_parameter_shardings"]


def test_spmd_with_several_processes_is_refused_before_starting() -> None:
    done = run([*plait_command(), "launch", "--backend", "xla", "--xla-spmd", "--num-processes", "2", str(WORKERS),
                "spmd", "never-written"])
    assert done.returncode == 2 and "spmd=true runs one process" in done.stderr and "nothing was started" in done.stderr


# ---------------------------------------------------------------------------- one process per device
def test_one_process_per_device_ranks_shares_and_exit_code(tmp_path: Path) -> None:
    """Two processes under ``plait launch``: ranks, a device each, disjoint shares covering the data, and the
    failing worker's exit code as the job's. XLA's collectives across CPU processes are refused by name."""
    results = worker(tmp_path, "ranks", launch=["--backend", "xla", "--num-processes", "2"], expect=3,
                     XLA_TEST_EXIT_CODE="3")
    assert sorted(results) == ["0", "1"]
    for rank, result in results.items():
        assert result["rank"] == int(rank) == result["local_rank"] and result["world"] == 2
        assert result["device"] == "xla:0" and result["batch_devices"] == ["xla:0"]
        assert result["distributed_type"] == "XLA"
        assert "#9089" in result["collective_error"] and "spmd: true" in result["collective_error"]
    shares = [results[r]["indices"] for r in ("0", "1")]
    assert shares[0] == [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]
    assert sorted(shares[0] + shares[1]) == list(range(24))
