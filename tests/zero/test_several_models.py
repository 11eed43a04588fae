"""Several models, each with its own optimizer, under ``zero`` on 2 processes: one DeepSpeed engine per model.

Two launches for the whole module (each DeepSpeed engine costs about a second, each
launch several): the first trains a GAN-like pair under ddp and under zero at each
stage, with one ``prepare`` call and with two, a student with a frozen teacher under
named zero configs, the refusals, and the runs the second launch resumes. ddp is the
oracle. The options of named configs are checked in this process, without DeepSpeed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
import several_workers as W
from zero_helpers import clean_environment, identical, max_diff  # noqa: F401

from plait.errors import ConfigError
from plait.testing import run_processes
from plait_zero.options import ZeroOptions

STAGES = (1, 2, 3)
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    root = str(tmp_path_factory.mktemp("several"))
    first = run_processes(W.several_worker, 2, args=(root,))
    second = run_processes(W.resume_worker, 2, args=(root,))
    return first, second


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("variant", ["dcgan", "accum"])
def test_a_gan_trains_under_zero_like_under_ddp(runs: Any, stage: int, variant: str) -> None:
    (rank0, rank1), _ = runs
    zero, ddp = rank0[f"zero{stage}/{variant}"], rank0[f"ddp/{variant}"]
    assert zero["types"] == ["DeepSpeedEngine", "DeepSpeedEngine"]
    assert ddp["types"] == ["DistributedDataParallel", "DistributedDataParallel"]
    for model in ("gen", "disc"):
        assert identical(zero[model], rank1[f"zero{stage}/{variant}"][model])  # full weights on every process
        assert max_diff(zero[model], ddp[model]) < TOLERANCE, model
    # The generator's scheduler (stepped by its engine) ran ddp's schedule; clipping returned ddp's norms.
    assert zero["lr"] == pytest.approx(ddp["lr"], rel=1e-12)
    assert zero["norms"] == pytest.approx(ddp["norms"], rel=1e-5)
    # The oracle can fail: both models moved, and the two loops end far apart.
    initial_gen, initial_disc = (W.params(m.state_dict()) for m in W.gan_models())
    assert max_diff(zero["gen"], initial_gen) > 1e-2 and max_diff(zero["disc"], initial_disc) > 1e-2
    other = "accum" if variant == "dcgan" else "dcgan"
    assert max_diff(zero["disc"], rank0[f"ddp/{other}"]["disc"]) > 1e-3


def test_dcgan_clipping_really_clipped(runs: Any) -> None:
    norms = runs[0][0]["ddp/dcgan"]["norms"]
    assert len(norms) == W.STEPS and sum(n > 0.5 for n in norms) >= 2


def test_one_prepare_call_or_two_give_the_same_numbers(runs: Any) -> None:
    rank0 = runs[0][0]
    one, two = rank0["zero2/dcgan"], rank0["zero2/dcgan/two-calls"]
    assert two["types"] == ["DeepSpeedEngine", "DeepSpeedEngine"]
    assert identical(one["gen"], two["gen"]) and identical(one["disc"], two["disc"])
    assert one["lr"] == two["lr"]


@pytest.mark.parametrize("stage", [2, 3])
def test_two_engines_resume_like_the_uninterrupted_run(runs: Any, stage: int) -> None:
    first, second = runs
    for r in range(2):
        full, resumed = first[r][f"zero{stage}/dcgan"], second[r][f"zero{stage}/resume"]
        assert identical(resumed["gen"], full["gen"]) and identical(resumed["disc"], full["disc"]), f"process {r}"
        assert resumed["lr"][-1] == full["lr"][-1]
    # The oracle can fail: training moved the weights after the save.
    assert not identical(first[0][f"zero{stage}/interrupt"]["disc"], first[0][f"zero{stage}/dcgan"]["disc"])


def test_a_frozen_teacher_under_its_own_zero3_config(runs: Any) -> None:
    (rank0, _), _ = runs
    zero, ddp = rank0["zero/teacher3"], rank0["ddp/teacher"]
    assert (zero["selected_first"], zero["selected_then"]) == ("student", "teacher")
    assert zero["select_error"].startswith("ConfigError: Select one of the zero configs 'student', 'teacher'")
    # The teacher is a ZeRO-3 inference engine: each process holds part of it...
    assert zero["teacher_type"] == "DeepSpeedEngine"
    assert zero["teacher_local_numel"] < sum(v.numel() for v in zero["teacher"].values())
    # ...and the student, trained on its outputs, matches ddp's.
    assert max_diff(zero["student"], ddp["student"]) < TOLERANCE
    # save_state/load_state: the student's engine checkpoint, the teacher's gathered weights.
    assert "zero/plait_zero.json" in zero["files"] and "model_1.safetensors" in zero["files"]
    assert identical(zero["teacher_loaded"], zero["teacher"]) and identical(zero["student_loaded"], zero["student"])


def test_a_frozen_teacher_under_stages_1_and_2_is_only_placed(runs: Any) -> None:
    (rank0, _), _ = runs
    zero = rank0["zero/teacher1"]
    assert zero["teacher_type"] == "Sequential"  # nothing for DeepSpeed to shard without an optimizer
    assert max_diff(zero["student"], rank0["ddp/teacher"]["student"]) < TOLERANCE


def test_what_one_engine_per_model_cannot_hold_is_refused_with_the_fix_first(runs: Any) -> None:
    refusals = runs[0][0]["refusals"]
    assert refusals["one_optimizer_two_models"].startswith(
        "ConfigError: Give each model its own optimizer, or put the models in one torch.nn.Module")
    assert "first and second models" in refusals["one_optimizer_two_models"]
    assert refusals["two_optimizers_one_model"].startswith(
        "ConfigError: Use one optimizer with a param group per part of the first model")
    leak = refusals["leak"]
    assert leak.startswith("RuntimeError: Freeze model 1 (Sequential) in the backward that should not train it")
    assert "zero_grad() before its own backward" in leak and "ZeRO stage 2" in leak
    assert refusals["zero_grad_first"].startswith(
        "RuntimeError: Call optimizer.zero_grad() after optimizer.step() (HF Accelerate's order), not before "
        "accelerator.backward(), for model 0 (Linear)")
    assert refusals["late_scheduler"] == ("AcceleratedScheduler", True)


# --------------------------------------------------------------------------- named configs, in this process
def test_named_configs_select_the_one_engines_are_built_from() -> None:
    options = ZeroOptions.from_section({"plugins": {"student": {"stage": 2}, "teacher": {"stage": 3, "zero3_init": True}}})
    assert options.plugin_names == ("student", "teacher") and options.selected == "student"
    assert options.active.stage == 2 and options.effective_stage == 2
    options.select("teacher")
    assert options.selected == "teacher" and options.active.zero3_init and options.effective_stage == 3
    assert ZeroOptions().active == ZeroOptions() and ZeroOptions().selected is None


@pytest.mark.parametrize("section,start", [
    ({"stage": 2, "plugins": {"a": {"stage": 3}}}, "Move zero option stage into each entry of plugins"),
    ({"plugins": {}}, "Give zero option plugins as a non-empty mapping"),
    ({"plugins": {"a": {"stage": 4}}}, "zero option stage=4 is not valid"),
    ({"plugins": {"a": {"plugins": {"b": {}}}}}, "Remove plugins from the zero config 'a'"),
    ({"plugins": {"a": 3}}, "Give the zero config 'a' as a mapping of zero options"),
])
def test_bad_named_configs_are_refused_with_the_fix_first(section: dict[str, Any], start: str) -> None:
    with pytest.raises(ConfigError) as info:
        ZeroOptions.from_section(section)
    assert str(info.value).startswith(start)


def test_selecting_without_named_configs_says_how_to_name_them() -> None:
    with pytest.raises(ConfigError, match=r"^Name the zero configs first \(zero option plugins"):
        ZeroOptions(stage=2).select("student")
