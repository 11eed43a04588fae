"""The scripts of examples/ a user copies in their first hour, run as examples/README.md says: ``python
script.py`` on one process, ``plait launch --num-processes 2 --cpu script.py`` on two, the language model also
on ``--backend fsdp`` (GPT2Block layers sharded one by one) and ``--backend zero --zero-stage 3``. Each run writes
its numbers with ``--result-file``; the tests check them: a loss below a bound, an accuracy above one, and two
processes of batch B equal to one process of 2B where the training is deterministic (the image example draws
flips and dropout per process, so there the resumed run must equal the uninterrupted one instead).

Each example's runs are module-scoped fixtures started together (the machine's two cores both busy).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from examples_helpers import EXAMPLES, Started, start, wait

pytestmark = pytest.mark.slow

Result = dict[str, Any]
#: Two processes against one with the doubled batch: the same sums, added in another order.
PARITY = 1e-5
#: The same, sharded (fsdp, ZeRO-3): gradients reduce-scattered and parameters gathered in other orders.
SHARDED_PARITY = 1e-4
SCRIPTS = ("linear_regression.py", "image_classification.py", "text_classification.py",
           "causal_language_model.py", "gan.py", "auto_resume.py")
FSDP_LAYERS = ["--backend", "fsdp", "--fsdp-auto-wrap-policy", "TRANSFORMER_BASED_WRAP",
               "--fsdp-transformer-layer-cls-to-wrap", "GPT2Block"]
ZERO_3 = ["--backend", "zero", "--zero-stage", "3"]


def run(script: str, args: list[str], cwd: Path, processes: int = 1, launch: list[str] | None = None) -> Started:
    """Start ``examples/<script>`` with ``--result-file cwd/result.json``."""
    return start(script, args, cwd, processes, launch or [], folder=EXAMPLES, result_flag="--result-file")


def scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    """The (step, value) pairs TensorBoard's own reader finds for ``tag`` in the event files of ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def largest_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b), f"{len(a)} values against {len(b)}"
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("first_hour")


def test_every_example_has_help(workdir: Path) -> None:
    runs = [start(script, ["--help"], workdir / f"help_{script[:-3]}", folder=EXAMPLES, result=False)
            for script in SCRIPTS]
    for script, started in zip(SCRIPTS, runs):
        _, text = started.finish()
        assert text.startswith("usage: "), f"{script}: {text[:500]}"
        if script != "auto_resume.py":
            assert "--result-file" in text, script


# --------------------------------------------------------------------------- linear_regression.py
@pytest.fixture(scope="module")
def linear(workdir: Path) -> tuple[Result, Result]:
    one, two = wait(run("linear_regression.py", [], workdir / "linear1"),
                    run("linear_regression.py", ["--batch-size", "8"], workdir / "linear2", processes=2))
    return one, two


def test_linear_regression_learns_the_line(linear: tuple[Result, Result]) -> None:
    for result in linear:
        assert result["a"] == pytest.approx(2.0, abs=0.05) and result["b"] == pytest.approx(3.0, abs=0.05)
        assert result["final_loss"] < 0.015  # the noise's variance is 0.01
        assert result["samples_seen"] == 1024  # gather_for_metrics: every sample once
    assert [r["num_processes"] for r in linear] == [1, 2]


def test_linear_regression_on_two_processes_equals_one(linear: tuple[Result, Result]) -> None:
    one, two = linear
    for key in ("a", "b", "final_loss"):
        assert two[key] == pytest.approx(one[key], abs=PARITY), key


# --------------------------------------------------------------------------- gan.py
@pytest.fixture(scope="module")
def gan(workdir: Path) -> tuple[Result, Result]:
    one, two = wait(run("gan.py", [], workdir / "gan1"),
                    run("gan.py", ["--batch-size", "32"], workdir / "gan2", processes=2))
    return one, two


def test_gan_generates_the_real_distribution(gan: tuple[Result, Result]) -> None:
    for result in gan:
        assert result["distance_before"] > 2.0
        assert result["distance_after"] < 0.35
        assert result["generated_mean"] == pytest.approx([2.0, -1.0], abs=0.3)
        assert result["generated_std"] == pytest.approx([0.5, 1.5], abs=0.3)
        assert len(result["d_losses"]) == len(result["g_losses"]) == 20


def test_gan_on_two_processes_follows_one(gan: tuple[Result, Result]) -> None:
    """Same data and noise, two models and two optimizers each synchronised: the adversarial game amplifies the
    rounding of the reordered sums, so closely but not to the last digit."""
    one, two = gan
    assert two["distance_after"] == pytest.approx(one["distance_after"], abs=2e-3)
    assert largest_difference(one["generated_mean"], two["generated_mean"]) < 2e-3
    assert largest_difference(one["d_losses"], two["d_losses"]) < 2e-3


# --------------------------------------------------------------------------- image_classification.py
@pytest.fixture(scope="module")
def images(workdir: Path) -> tuple[Result, Result]:
    """1 process of 32 and 2 of 16: 16 steps per epoch, 4 epochs, saved every 10 steps."""
    one, two = wait(
        run("image_classification.py", ["--checkpointing-steps", "10"], workdir / "img1"),
        run("image_classification.py", ["--batch-size", "16", "--checkpointing-steps", "10"], workdir / "img2",
            processes=2),
    )
    return one, two


@pytest.fixture(scope="module")
def images_resumed(images: tuple[Result, Result], workdir: Path) -> tuple[Result, Result, str]:
    """1 process from step_20 (epoch 1 after 4 batches); 2 processes from the newest checkpoint (step_60: epoch 3
    after 12 batches); and a resume from 'latest' where there is none."""
    missing = start("image_classification.py", ["--resume-from-checkpoint", "latest", "--output-dir", "nothing"],
                    workdir / "img_missing", folder=EXAMPLES, result=False)
    one, two = wait(
        run("image_classification.py", ["--resume-from-checkpoint", str(workdir / "img1" / "checkpoints" / "step_20"),
                                        "--data-dir", str(workdir / "img1" / "data")], workdir / "img1r"),
        run("image_classification.py", ["--batch-size", "16", "--resume-from-checkpoint", "latest", "--output-dir",
                                        str(workdir / "img2" / "checkpoints")], workdir / "img2r", processes=2),
    )
    code, text = missing.finish(check=False)
    assert code != 0
    return one, two, text


def test_image_classifier_learns(images: tuple[Result, Result], workdir: Path) -> None:
    for result, folder in zip(images, ("img1", "img2")):
        assert result["overall_step"] == 64 and result["steps_per_epoch"] == 16
        assert result["accuracies"][0] < 0.5 < 0.9 < result["accuracies"][-1]  # chance is 0.1
        assert result["eval_count"] == 250  # 250 images in batches of 64 on 2 processes: each counted once
        assert sum(result["train_losses"][-5:]) < sum(result["train_losses"][:5]) / 3
        names = sorted((workdir / folder / "checkpoints").iterdir(), key=lambda p: int(p.name[5:]))
        assert [p.name for p in names] == [f"step_{n}" for n in range(10, 70, 10)]
        # main_process_first: the main process wrote the cache once, the other read it.
        assert sorted(p.name for p in (workdir / folder / "data").iterdir()) == [
            "synthetic_cifar_eval_250_2.pt", "synthetic_cifar_train_512_1.pt"]
        assert result["learning_rate"] < 3e-3 / 100  # the one-cycle schedule ran to its end


def test_image_classifier_resumes_mid_epoch_exactly(images: tuple[Result, Result],
                                                    images_resumed: tuple[Result, Result, str]) -> None:
    """Model, optimizer, scheduler and random states loaded, 4 batches skipped: the same flips, the same dropout,
    the same numbers to the last bit."""
    uninterrupted, resumed = images[0], images_resumed[0]
    assert resumed["overall_step"] == 64
    assert resumed["train_losses"] == uninterrupted["train_losses"][20:]
    assert resumed["accuracies"] == uninterrupted["accuracies"][1:]
    assert resumed["parameters"] == uninterrupted["parameters"]


def test_image_classifier_resumes_the_newest_checkpoint_on_two_processes(
        images: tuple[Result, Result], images_resumed: tuple[Result, Result, str], workdir: Path) -> None:
    uninterrupted, resumed = images[1], images_resumed[1]
    assert f"resumed from {workdir / 'img2' / 'checkpoints' / 'step_60'}: epoch 3, batch 12" in (
        workdir / "img2r" / "output.log").read_text()
    assert resumed["train_losses"] == uninterrupted["train_losses"][60:]
    assert resumed["parameters"] == uninterrupted["parameters"]


def test_image_classifier_says_when_there_is_nothing_to_resume(images_resumed: tuple[Result, Result, str]) -> None:
    assert ("--resume-from-checkpoint latest: no step_<n> checkpoint in --output-dir 'nothing'; train with "
            "--checkpointing-steps N first, or name a checkpoint folder") in images_resumed[2]


# --------------------------------------------------------------------------- text_classification.py
@pytest.fixture(scope="module")
def texts(workdir: Path) -> tuple[Result, Result, Result]:
    """fp32 on 1 process of 16 and on 2 of 8; bf16 with TensorBoard on 1."""
    one, two, bf16 = wait(
        run("text_classification.py", [], workdir / "text1"),
        run("text_classification.py", ["--batch-size", "8"], workdir / "text2", processes=2),
        run("text_classification.py", ["--mixed-precision", "bf16", "--with-tracking", "--project-dir", "runs"],
            workdir / "text_bf16"),
    )
    return one, two, bf16


def test_text_classifier_learns_the_majority_rule(texts: tuple[Result, Result, Result]) -> None:
    for result in texts:
        assert result["accuracies"][-1] > 0.9  # chance is about 0.5
        assert result["final_eval_loss"] < 0.25
        assert result["eval_count"] == 201
        # 512 sentences in batches of 16, 2 accumulated: 16 optimizer steps per epoch, the schedule run out.
        assert result["completed_steps"] == 64 and result["learning_rate"] == 0.0
    assert [r["mixed_precision"] for r in texts] == ["no", "no", "bf16"]


def test_text_classifier_on_two_processes_equals_one(texts: tuple[Result, Result, Result]) -> None:
    one, two, _ = texts
    assert two["num_processes"] == 2
    # Batches padded to their own longest sentence; the attention mask makes the padding count for nothing.
    assert largest_difference(one["step_losses"], two["step_losses"]) < 1e-4
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=1e-4)
    assert two["accuracies"] == one["accuracies"]


def test_text_classifier_in_bf16_logs_to_tensorboard(texts: tuple[Result, Result, Result], workdir: Path) -> None:
    one, _, bf16 = texts
    assert bf16["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=0.05)
    assert bf16["step_losses"] != one["step_losses"]  # autocast did run in bf16
    folder = workdir / "text_bf16" / "runs" / "text_classification"
    assert [value for _, value in scalars(folder, "train_loss")] == pytest.approx(bf16["step_losses"], rel=1e-6)
    assert [step for step, _ in scalars(folder, "accuracy")] == [16, 32, 48, 64]
    assert [value for _, value in scalars(folder, "accuracy")] == pytest.approx(bf16["accuracies"], rel=1e-6)


# --------------------------------------------------------------------------- causal_language_model.py
@pytest.fixture(scope="module")
def language_model(workdir: Path) -> tuple[Result, Result, Result]:
    """fp32 with TensorBoard on 1 process of 16, fp32 on 2 (ddp) of 8, bf16 on 1."""
    one, two, bf16 = wait(
        run("causal_language_model.py", ["--with-tracking"], workdir / "lm1"),
        run("causal_language_model.py", ["--batch-size", "8"], workdir / "lm2", processes=2),
        run("causal_language_model.py", ["--mixed-precision", "bf16"], workdir / "lm_bf16"),
    )
    return one, two, bf16


@pytest.fixture(scope="module")
def sharded_language_model(workdir: Path) -> tuple[Result, Result]:
    """2 processes of 8 on fsdp (each GPT2Block sharded on its own) and on ZeRO-3. The first DeepSpeed start on
    a machine compiles its CPU communication op (minutes); later ones load it from the cache."""
    fsdp, zero = wait(
        run("causal_language_model.py", ["--batch-size", "8"], workdir / "lm_fsdp", processes=2, launch=FSDP_LAYERS),
        run("causal_language_model.py", ["--batch-size", "8"], workdir / "lm_zero", processes=2, launch=ZERO_3),
        timeout=600,
    )
    return fsdp, zero


def test_language_model_learns_to_count(language_model: tuple[Result, Result, Result]) -> None:
    for result in language_model:
        assert result["eval_losses"][-1] < 1.0 < math.log(32)  # guessing: ln 32 = 3.47
        assert result["eval_losses"] == sorted(result["eval_losses"], reverse=True)
        # 512 sequences in batches of 16, 2 accumulated, 4 epochs.
        assert result["completed_steps"] == 64 == len(result["step_losses"])
    assert [r["distributed_type"] for r in language_model] == ["NO", "MULTI_CPU", "NO"]


def test_language_model_on_two_processes_equals_one(language_model: tuple[Result, Result, Result]) -> None:
    one, two, _ = language_model
    assert largest_difference(one["step_losses"], two["step_losses"]) < PARITY
    assert two["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=PARITY)


def test_language_model_in_bf16(language_model: tuple[Result, Result, Result]) -> None:
    one, _, bf16 = language_model
    assert bf16["mixed_precision"] == "bf16"
    assert bf16["step_losses"] != one["step_losses"]
    assert bf16["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=0.1)


def test_language_model_logs_to_tensorboard(language_model: tuple[Result, Result, Result], workdir: Path) -> None:
    one = language_model[0]
    folder = workdir / "lm1" / "logs" / "causal_language_model"
    assert [value for _, value in scalars(folder, "train_loss")] == pytest.approx(one["step_losses"], rel=1e-6)
    assert [step for step, _ in scalars(folder, "eval_loss")] == [16, 32, 48, 64]
    assert [value for _, value in scalars(folder, "eval_loss")] == pytest.approx(one["eval_losses"], rel=1e-6)
    learning_rates = [value for _, value in scalars(folder, "lr")]
    assert learning_rates[3] == pytest.approx(1e-2) and learning_rates[-1] == 0.0  # 4 warmup steps, then linear


def test_language_model_on_fsdp_with_layer_wrapping_equals_one_process(
        language_model: tuple[Result, Result, Result], sharded_language_model: tuple[Result, Result]) -> None:
    one, fsdp = language_model[0], sharded_language_model[0]
    assert fsdp["distributed_type"] == "FSDP" and fsdp["num_processes"] == 2
    assert fsdp["prepared_model"] == "FSDPGPT2LMHeadModel" and fsdp["block_class"] == "FSDPGPT2Block"
    assert largest_difference(one["step_losses"], fsdp["step_losses"]) < SHARDED_PARITY
    assert fsdp["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=SHARDED_PARITY)


def test_language_model_on_zero_3_equals_one_process(
        language_model: tuple[Result, Result, Result], sharded_language_model: tuple[Result, Result]) -> None:
    """DeepSpeed's engine steps the scheduler itself, once per optimizer step: the schedule written in this
    process's optimizer steps has the same length there."""
    one, zero = language_model[0], sharded_language_model[1]
    assert zero["distributed_type"] == "DEEPSPEED" and zero["prepared_model"] == "DeepSpeedEngine"
    assert zero["completed_steps"] == 64
    assert largest_difference(one["step_losses"], zero["step_losses"]) < SHARDED_PARITY
    assert zero["final_eval_loss"] == pytest.approx(one["final_eval_loss"], abs=SHARDED_PARITY)
