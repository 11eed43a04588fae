"""plait-int8-ddp as its users run it: installed, listed by ``plait plugins``, selected by name, training on two
real processes over gloo (``plait launch --num-processes 2``), with plait's own ``ddp`` as the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from plait_int8_ddp import Int8Options
from plait_int8_ddp.quantized_allreduce import LEVELS, average, quantize

from plait import Accelerator
from plait.errors import ConfigError

TRAIN = Path(__file__).with_name("train.py")
PLAIT = str(Path(sys.executable).with_name("plait"))


def plait(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                      "MASTER_"))}
    return subprocess.run([PLAIT, *args], capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})


def train(tmp_path: Path, *flags: str) -> dict[str, Any]:
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}.json"
    result = plait("launch", "--num-processes", "2", "--cpu", *flags, str(TRAIN), str(out))
    assert result.returncode == 0, result.stderr[-6000:]
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("runs")
    return {"int8": train(folder, "--backend", "int8_ddp"), "ddp": train(folder, "--backend", "ddp")}


def test_plait_plugins_lists_the_backend_with_its_hooks() -> None:
    result = plait("plugins", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = [p for p in json.loads(result.stdout) if p["group"] == "plait.backends" and p["name"] == "int8_ddp"]
    assert entry["distribution"] == "plait-int8-ddp"
    assert entry["status"] == "ok"
    assert {"plait_backend_options", "plait_wrap_model", "plait_unwrap_model", "plait_launch_options"} <= set(entry["hooks"])


def test_every_communicated_gradient_is_the_exact_average_within_half_an_int8_step(runs) -> None:  # type: ignore[no-untyped-def]
    run = runs["int8"]
    assert run["processes"] == 2 and run["wrapper"] == "DistributedDataParallel"
    assert len(run["errors"]) == 32
    for error, bound in zip(run["errors"], run["bounds"]):
        assert error <= bound * (1 + 1e-4) + 1e-7, (error, bound)
    # and it was really compressed: plain ddp's float32 all-reduce is exact to rounding, int8's is not
    assert max(run["errors"]) > 1e-4 and max(runs["ddp"]["errors"]) < 1e-5


def test_it_trains_as_plain_ddp_does(runs) -> None:  # type: ignore[no-untyped-def]
    int8, ddp = runs["int8"], runs["ddp"]
    assert int8["losses"][-1] < int8["losses"][0] / 50
    assert int8["losses"][0] == pytest.approx(ddp["losses"][0], rel=1e-6)  # the same first step
    assert int8["losses"][-1] == pytest.approx(ddp["losses"][-1], rel=0.1, abs=1e-3)
    assert max(abs(a - b) for a, b in zip(int8["params"], ddp["params"])) < 0.02


def test_launch_flags_reach_the_options_and_bad_values_are_refused(tmp_path: Path) -> None:
    run = train(tmp_path, "--backend", "int8_ddp", "--int8-ddp-min-elements", "1000")  # every bucket in float32
    assert max(run["errors"]) < 1e-5
    refused = plait("launch", "--num-processes", "2", "--cpu", "--backend", "int8_ddp", "--int8-ddp-min-elements",
                    "-1", str(TRAIN), str(tmp_path / "never.json"))
    assert refused.returncode == 2 and "-1" in refused.stderr and "--int8-ddp-min-elements" in refused.stderr
    assert not (tmp_path / "never.json").exists()


def test_options_are_checked_by_name() -> None:
    assert Int8Options.from_section({"bucket_cap_mb": 1}) == Int8Options(bucket_cap_mb=1)
    with pytest.raises(ConfigError, match=r"unknown int8_ddp option 'bucket_mb': valid options are bucket_cap_mb"):
        Int8Options.from_section({"bucket_mb": 1})
    with pytest.raises(ConfigError, match=r"int8_ddp option bucket_cap_mb=0 is not valid: expected a positive"):
        Int8Options(bucket_cap_mb=0)
    with pytest.raises(ConfigError, match=r"backend_options for 'int8_ddp' is a list"):
        Accelerator(backend="int8_ddp", backend_options=[1], cpu=True)


def test_one_process_runs_unwrapped_and_the_int8_round_trip_of_a_group_of_one_is_within_half_a_step() -> None:
    accelerator = Accelerator(backend="int8_ddp", cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 1))
    assert type(model) is torch.nn.Linear and accelerator.backend_options == Int8Options()

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # type: ignore[attr-defined]
    try:
        gradient = torch.randn(1000)
        scale = gradient.abs().max() / LEVELS
        assert quantize(gradient, scale).dtype == torch.int8
        error = (average(gradient.clone()) - gradient).abs().max()
        assert 0 < error <= scale / 2 + 1e-7
    finally:
        dist.destroy_process_group()
