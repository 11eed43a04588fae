"""The ddp backend on 2 real processes (gloo): numerical oracles, accumulation, wrapping, options, teardown.

Two launches for the whole module (each ~5 s): one for training and accumulation,
one for the ``ddp:`` options. The 1-process references are computed here with
plain torch.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import ddp_workers as W
from ddp_helpers import clean_environment, identical, max_diff  # noqa: F401

from plait.testing import run_processes

ENV_OPTIONS = {"find_unused_parameters": True, "bucket_cap_mb": 1}


@pytest.fixture(scope="module")
def oracle() -> list[dict[str, Any]]:
    return run_processes(W.oracle_worker, 2)


@pytest.fixture(scope="module")
def options() -> list[dict[str, Any]]:
    return run_processes(W.options_worker, 2, env={"PLAIT_DDP": json.dumps(ENV_OPTIONS)})


def local_grad(indices: slice, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The gradient of the MSE on ``indices`` at the initial parameters, times ``scale`` (plain torch)."""
    x, y = W.make_data()
    model = W.make_model()
    (nn.functional.mse_loss(model(x[indices]), y[indices]) * scale).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- #
# numerical oracles
# --------------------------------------------------------------------------- #


def test_two_processes_of_8_match_one_process_of_16(oracle: list[dict[str, Any]]) -> None:
    rank0, rank1 = oracle
    assert identical(rank0["plain"], rank1["plain"]), "the two replicas diverged"
    reference = W.reference_sgd(W.make_model(), batch_size=16)
    assert max_diff(rank0["plain"], reference) < 1e-6
    # The oracle can fail: one process of 8 (half the data per step) ends far away.
    assert max_diff(rank0["plain"], W.reference_sgd(W.make_model(), batch_size=8)) > 1e-3
    # ...and training happened at all.
    assert max_diff(rank0["plain"], W.params(W.make_model())) > 1e-2


def test_accumulation_of_2_matches_one_process_of_32(oracle: list[dict[str, Any]]) -> None:
    rank0, rank1 = oracle
    assert rank0["accum_is_ddp"]
    # 6 batches per process per epoch: sync every 2nd micro-step (the last one is also the end of the loader).
    assert rank0["accum_sync_flags"] == [False, True, False, True, False, True]
    assert identical(rank0["accum"], rank1["accum"])
    reference = W.reference_sgd(W.make_model(), batch_size=32)
    assert max_diff(rank0["accum"], reference) < 1e-6
    assert max_diff(rank0["accum"], W.reference_sgd(W.make_model(), batch_size=16)) > 1e-3


def test_accumulate_skips_gradient_sync_on_non_sync_micro_steps(oracle: list[dict[str, Any]]) -> None:
    rank0, rank1 = oracle
    # Micro-step 1 (no sync): each process holds the gradient of its own 8 samples only (loss / 2).
    # Process r got global batch r: samples 8r..8r+7.
    assert max_diff(rank0["grads_nonsync"], rank1["grads_nonsync"]) > 1e-3, "gradients were synchronised"
    assert max_diff(rank0["grads_nonsync"], local_grad(slice(0, 8), 0.5)) < 1e-6
    assert max_diff(rank1["grads_nonsync"], local_grad(slice(8, 16), 0.5)) < 1e-6
    # Micro-step 2 (sync): every process holds the average over all 32 samples of the two micro-steps.
    assert identical(rank0["grads_sync"], rank1["grads_sync"])
    assert max_diff(rank0["grads_sync"], local_grad(slice(0, 32))) < 1e-6


def test_wrapped_model_is_distributed_data_parallel(oracle: list[dict[str, Any]]) -> None:
    for rank in oracle:
        assert rank["backend"] == "ddp"  # more than one process and no backend named
        assert rank["distributed_type"] == "MULTI_CPU"
        assert rank["backend_options_type"] == "DDPOptions"
        assert rank["is_ddp"]
        assert rank["unwrap_is_original"]


def test_end_training_destroys_the_process_group(oracle: list[dict[str, Any]]) -> None:
    for rank in oracle:
        assert rank["initialized_before_end"] is True
        assert rank["initialized_after_end"] is False
        assert rank["initialized_after_second_end"] is False


# --------------------------------------------------------------------------- #
# the ddp: section
# --------------------------------------------------------------------------- #


def test_options_from_the_plait_ddp_variable(options: list[dict[str, Any]]) -> None:
    import dataclasses

    from plait_ddp import DDPOptions

    expected = dataclasses.asdict(DDPOptions(**ENV_OPTIONS))
    for rank in options:
        assert rank["env_options"] == expected
        assert rank["env_find_unused_attr"] is True
        assert rank["env_bucket_bytes_cap"] == 1024 * 1024
    # The unused branch trained without error, the used part exactly like one process of 16.
    rank0, rank1 = options
    assert identical(rank0["env_params_used"], rank1["env_params_used"])
    reference = W.reference_sgd(W.Branchy(), batch_size=16, epochs=1)
    used = {k.removeprefix("used."): v for k, v in reference.items() if k.startswith("used.")}
    assert max_diff(rank0["env_params_used"], used) < 1e-6
    assert identical(rank0["env_params_unused_after"], rank0["env_params_unused_before"])


def test_unused_branch_fails_without_find_unused_parameters(options: list[dict[str, Any]]) -> None:
    for rank in options:
        assert rank["off_error"] is not None, "an unused parameter went unnoticed without find_unused_parameters"
        assert "find_unused_parameters" in rank["off_error"]


@pytest.mark.parametrize(
    "hook", ["bf16", "fp16"]
)
def test_compressed_gradients_change_numbers_slightly_but_train(options: list[dict[str, Any]], hook: str) -> None:
    rank0, rank1 = options
    assert rank0.get(f"{hook}_error") is None, rank0[f"{hook}_error"]
    if hook == "bf16":
        # A dict of backend_options merges over the PLAIT_DDP section.
        assert rank0["bf16_options"] == {**rank0["env_options"], "comm_hook": "bf16"}
    else:
        # A DDPOptions object replaces the section.
        import dataclasses

        from plait_ddp import DDPOptions

        assert rank0["fp16_options"] == dataclasses.asdict(DDPOptions(comm_hook="fp16"))
        assert rank0["fp16_find_unused_attr"] is False
    trained = rank0[f"{hook}_params"]
    assert identical(trained, rank1[f"{hook}_params"])
    reference = W.reference_sgd(W.make_model(), batch_size=16)
    difference = max_diff(trained, reference)
    # Above the exact-oracle tolerance (1e-6), far below a training difference.
    assert 1e-6 < difference < 5e-3, f"{hook} compression: max difference {difference}"
    losses = rank0[f"{hook}_losses"]
    assert sum(losses[-6:]) < 0.8 * sum(losses[:6])


def test_single_backend_under_a_launcher_says_to_use_ddp(options: list[dict[str, Any]]) -> None:
    for rank in options:
        error = rank["single_error"]
        assert error is not None and error.startswith("ConfigError")
        assert "'ddp'" in error and "2" in error


# --------------------------------------------------------------------------- #
# bad options: errors at construction (one process, no launch)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"find_unused_parameter": True}, "did you mean 'find_unused_parameters'"),
        ({"static_grap": True}, "did you mean 'static_graph'"),
        ({"bucket_cap": 25}, "did you mean 'bucket_cap_mb'"),
        ({"comm_hook": "bf61"}, "did you mean 'bf16'"),
        ({"comm_hook": "fp32"}, "comm_hook='fp32' is not valid"),
        ({"find_unused_parameters": "yes"}, "expected true or false"),
        ({"bucket_cap_mb": -1}, "expected a positive number"),
        ({"bucket_cap_mb": True}, "expected a positive number"),
    ],
)
def test_bad_options_raise_config_error(section: dict[str, Any], expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from plait import Accelerator, ConfigError
    from plait_ddp import DDPOptions

    with pytest.raises(ConfigError, match=re.escape(expected)):
        DDPOptions.from_section(section)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Accelerator(backend="ddp", backend_options=section)
    monkeypatch.setenv("PLAIT_DDP", json.dumps(section))
    with pytest.raises(ConfigError, match=re.escape(expected)):
        Accelerator(backend="ddp")


def test_bad_option_objects_raise_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from plait import Accelerator, ConfigError
    from plait_ddp import DDPOptions

    with pytest.raises(ConfigError, match=r"expected a dict or plait_ddp\.DDPOptions"):
        Accelerator(backend="ddp", backend_options=object())
    with pytest.raises(ConfigError, match="comm_hook"):
        DDPOptions(comm_hook="int8")
    monkeypatch.setenv("PLAIT_DDP", "{not json")
    with pytest.raises(ConfigError, match=r"PLAIT_DDP.*not valid JSON"):
        Accelerator(backend="ddp")
    monkeypatch.setenv("PLAIT_DDP", "[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        Accelerator(backend="ddp")


def test_ddp_with_one_process_does_not_wrap() -> None:
    from plait import Accelerator

    accelerator = Accelerator(backend="ddp")
    model = W.make_model()
    assert accelerator.num_processes == 1
    assert str(accelerator.distributed_type) == "NO"
    assert accelerator.prepare(model) is model
