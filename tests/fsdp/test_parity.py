"""fsdp against ddp on 2 real processes (gloo, fp32): the same parameters within 1e-5 after 20 steps.

One launch for the whole module: every case trains the same model with ddp and with
fsdp in the same processes, and the test compares the consolidated weights.
"""

from __future__ import annotations

from typing import Any

import fsdp_workers as W
import pytest

from plait.testing import max_diff, run_processes

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def parity() -> list[dict[str, Any]]:
    return run_processes(W.parity_worker, 2)


@pytest.mark.parametrize("case", list(W.CASES))
def test_fsdp_matches_ddp_after_20_steps(parity: list[dict[str, Any]], case: str) -> None:
    result = parity[0][case]
    assert max_diff(result["fsdp"], result["ddp"]) < TOLERANCE
    # The oracle can fail: the weights moved far from where they started.
    start = W.params(W.make(W.CASES[case]["kind"]))
    assert max_diff(result["fsdp"], start) > 1e-2
    # Consolidated, unwrapped weights on the main process only (the others took part and got nothing).
    assert parity[1][case]["fsdp"] == {}


def test_clip_grad_norm_returns_the_global_norm_over_shards(parity: list[dict[str, Any]]) -> None:
    for case in ("clip", "transformer"):
        for rank in parity:
            ddp, fsdp = rank[case]["ddp_norms"], rank[case]["fsdp_norms"]
            assert len(fsdp) == W.STEPS
            assert max(abs(a - b) / a for a, b in zip(ddp, fsdp)) < 1e-5
            # Clipping was active (most norms above the bound), so it shaped the result that matched ddp.
            assert sum(n > W.CASES[case]["clip"] for n in fsdp) >= W.STEPS // 2


def test_accumulation_skips_gradient_sync(parity: list[dict[str, Any]]) -> None:
    for case in ("accumulate", "transformer_ac_grad_op"):
        for rank in parity:
            # On a non-sync micro-step no reduce-scatter ran: no parameter has its sharded gradient yet.
            assert rank[case]["grads_during_no_sync"] and all(rank[case]["grads_during_no_sync"])
    assert parity[0]["plain"]["grads_during_no_sync"] is None  # (no accumulation, never probed)


def test_prepare_shards_in_place_and_rebinds_the_optimizer(parity: list[dict[str, Any]]) -> None:
    for rank in parity:
        for case in W.CASES:
            result = rank[case]
            assert result["same_object"], "fully_shard works in place: unwrap_model is the user's module"
            assert result["params_are_dtensors"]
            assert result["parameters_replaced"]
            assert result["optimizer_rebound"], f"{case}: the optimizer built before prepare still holds old parameters"
            assert result["param_device"] == "cpu"


def test_wrapping_by_layer_class_and_by_size(parity: list[dict[str, Any]]) -> None:
    groups = {case: parity[0][case]["sharded_groups"] for case in W.CASES}
    assert groups["plain"] == ["<root>"]
    assert groups["transformer"] == ["<root>", "blocks.0", "blocks.1", "blocks.2"]
    assert groups["transformer_ac_grad_op"] == [
        "<root>", "blocks.0", "blocks.0.attn", "blocks.1", "blocks.1.attn", "blocks.2", "blocks.2.attn"
    ]
    # min_num_params=2000: each MLP (2128 parameters) gets a group; the rest of a block (1152) does not,
    # and the ModuleList of blocks is a container without a forward, so it is never a group.
    assert groups["size_offload"] == ["<root>", "blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"]


def test_cpu_ram_efficient_loading_broadcasts_the_main_process_weights(parity: list[dict[str, Any]]) -> None:
    rank0, rank1 = parity
    assert rank0["ram_efficient"]["meta_on_this_rank"] is False
    assert rank1["ram_efficient"]["meta_on_this_rank"] is True  # built on meta: no weights of its own
    # ...and yet training matched ddp (checked above), and the non-persistent buffer arrived too.
    assert rank1["ram_efficient"]["buffer_scale"] == 0.5
    assert max_diff(rank0["ram_efficient"]["fsdp"], rank0["ram_efficient"]["ddp"]) < TOLERANCE


def test_bf16_mixed_precision_policy(parity: list[dict[str, Any]]) -> None:
    bf16 = parity[0]["bf16"]
    assert bf16["stored"] == "torch.float32"  # sharded parameters (and the optimizer) stay fp32
    assert bf16["compute"] == "torch.bfloat16"  # layers compute with FSDP's bf16 all-gathered copy
    diff = max_diff(bf16["weights"], bf16["ddp_fp32"])
    assert 1e-4 < diff < 0.2, f"bf16 should be close to fp32 but not identical, got {diff}"


def test_a_layer_class_not_in_the_model_lists_the_classes_it_has(parity: list[dict[str, Any]]) -> None:
    for rank in parity:
        error = rank["missing_class_error"]
        assert error is not None and error.startswith("ConfigError")
        assert "'GPT2Block'" in error
        for present in ("Block", "Attention", "LayerNorm", "TinyTransformer"):
            assert present in error


def test_fp16_scales_the_loss_with_a_sharded_scaler(parity: list[dict[str, Any]]) -> None:
    for rank in parity:
        fp16 = rank["fp16"]
        assert fp16["fsdp_scaler"] == "ShardedGradScaler" and fp16["ddp_scaler"] == "GradScaler"
        # The same overflowing first steps were skipped (the scale backed off as often as ddp's) on every process.
        assert fp16["fsdp_scale"] == fp16["ddp_scale"] < 65536.0
        assert fp16["fsdp_finite_norms"] == fp16["ddp_finite_norms"] > 0
    diff = max_diff(parity[0]["fp16"]["fsdp"], parity[0]["fp16"]["ddp"])
    assert diff < 0.05


def test_reshard_after_forward_and_activation_checkpointing_do_what_they_say(parity: list[dict[str, Any]]) -> None:
    for rank in parity:
        full_shard = rank["transformer"]["sharded_after_forward"]  # reshard_after_forward=true (FULL_SHARD)
        grad_op = rank["transformer_ac_grad_op"]["sharded_after_forward"]  # false (SHARD_GRAD_OP)
        assert full_shard.count(True) > 0, "FULL_SHARD kept the layers' gathered parameters after forward"
        assert grad_op.count(True) == 0, "SHARD_GRAD_OP freed gathered parameters before backward"
        # The root's own parameters stay gathered until backward either way (they are needed first there).
        assert full_shard.count(False) == len([n for n in W.params(W.make("transformer")) if not n.startswith("blocks")
                                               and n != "scale"])
        assert rank["transformer"]["block_linear_forward_calls"] == W.STEPS
        assert rank["transformer_ac_grad_op"]["block_linear_forward_calls"] == 2 * W.STEPS  # recomputed in backward


def test_meta_weights_on_one_process_fail_on_every_process(parity: list[dict[str, Any]]) -> None:
    for rank in parity:  # (the launch returned at all: no process was left waiting in a collective)
        error = rank["meta_without_option_error"]
        assert error is not None and error.startswith("ConfigError")
        assert "process 1 has parameters on the meta device" in error and "cpu_ram_efficient_loading" in error
