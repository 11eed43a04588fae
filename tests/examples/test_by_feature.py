"""The scripts of examples/by_feature (HF Accelerate's, written for plait), run as a user runs them: ``python
script.py`` on one process and ``plait launch --num_processes 2 --cpu script.py`` on two, each checked
against the numbers it writes with ``--result_file``.

Where it holds (data-parallel training without accumulation quirks), two processes with batch B must end
with the parameters of one process with batch 2B. Each script's runs are module-scoped fixtures, started
together (a one-process run and a two-process run keep both cores busy) and read by several tests. The
fsdp and deepspeed scripts are tested in tests/fsdp and tests/zero (their backends are installed only there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from examples_helpers import (
    BY_FEATURE,
    loss_went_down,
    max_difference,
    read_result,
    run_for_result,
    shrinking_batch_sizes,
    start,
    wait,
)

pytestmark = pytest.mark.slow

#: Two processes against one with the doubled batch: the same sums, added in another order.
PARITY = 1e-5

Result = dict[str, Any]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("by_feature")


def test_every_accelerate_script_has_a_counterpart() -> None:
    names = {
        "automatic_gradient_accumulation", "checkpointing", "cross_validation", "ddp_comm_hook",
        "deepspeed_with_config_support", "early_stopping", "fsdp_with_peak_mem_tracking", "gradient_accumulation",
        "gradient_accumulation_for_autoregressive_models", "local_sgd", "megatron_lm_gpt_pretraining", "memory",
        "multi_process_metrics", "profiler", "schedule_free", "tracking",
    }
    shared = {"synthetic_pairs", "synthetic_text"}  # the modules the scripts import, not scripts
    assert {path.stem for path in BY_FEATURE.glob("*.py")} == names | shared
    for name in names:
        text = (BY_FEATURE / f"{name}.py").read_text()
        assert "from accelerate" not in text and "import accelerate" not in text, name
        assert "from plait" in text, name


# --------------------------------------------------------------------------- checkpointing.py
@pytest.fixture(scope="module")
def checkpointed(workdir: Path) -> dict[str, Result]:
    """1 process: 32 steps (2 epochs of 16) saved every 6 steps, and the same saved every epoch;
    2 processes of 8: 32 steps, saved every 5."""
    steps, epochs, two = wait(
        start("checkpointing.py", ["--checkpointing_steps", "6", "--output_dir", "steps"], workdir / "ck_a"),
        start("checkpointing.py", ["--checkpointing_steps", "epoch", "--output_dir", "epochs"], workdir / "ck_e"),
        start("checkpointing.py", ["--batch_size", "8", "--checkpointing_steps", "5", "--output_dir", "steps"],
              workdir / "ck_2", processes=2),
    )
    return {"steps": steps, "epochs": epochs, "two": two}


@pytest.fixture(scope="module")
def resumed(checkpointed: dict[str, Result], workdir: Path) -> dict[str, Result]:
    """From step_18 (epoch 1 after 2 of its 16 batches), from epoch_0, and on 2 processes from step_20."""
    step, epoch, two = wait(
        start("checkpointing.py", ["--resume_from_checkpoint", str(workdir / "ck_a" / "steps" / "step_18"),
                                   "--output_dir", "more"], workdir / "ck_r"),
        start("checkpointing.py", ["--resume_from_checkpoint", str(workdir / "ck_e" / "epochs" / "epoch_0")],
              workdir / "ck_re"),
        start("checkpointing.py", ["--batch_size", "8", "--resume_from_checkpoint",
                                   str(workdir / "ck_2" / "steps" / "step_20"), "--output_dir", "more"],
              workdir / "ck_2r", processes=2),
    )
    return {"step": step, "epoch": epoch, "two": two}


def test_checkpointing_trains_and_saves(checkpointed: dict[str, Result], workdir: Path) -> None:
    uninterrupted = checkpointed["steps"]
    assert uninterrupted["overall_step"] == checkpointed["two"]["overall_step"] == 32
    assert checkpointed["two"]["num_processes"] == 2
    for result in checkpointed.values():
        assert loss_went_down(result["train_losses"])
        assert result["epochs"][-1]["accuracy"] > 0.8
        assert result["epochs"][-1]["count"] == 101  # gather_for_metrics: the 101 samples, no repeats
    assert sorted(p.name for p in (workdir / "ck_a" / "steps").iterdir()) == [f"step_{n}" for n in (12, 18, 24, 30, 6)]
    assert sorted(p.name for p in (workdir / "ck_e" / "epochs").iterdir()) == ["epoch_0", "epoch_1"]
    # Saving changes nothing in the training itself.
    assert checkpointed["epochs"]["parameters"] == uninterrupted["parameters"]


def test_resume_from_a_step_in_the_second_epoch_is_exact(checkpointed: dict[str, Result],
                                                         resumed: dict[str, Result]) -> None:
    """skip_first_batches skips 2 batches of epoch 1; dropout continues from the restored random states."""
    uninterrupted, result = checkpointed["steps"], resumed["step"]
    assert result["overall_step"] == 32
    assert result["train_losses"] == uninterrupted["train_losses"][18:]
    assert result["epochs"] == uninterrupted["epochs"][1:]
    assert result["parameters"] == uninterrupted["parameters"]


def test_resume_from_an_epoch_is_exact(checkpointed: dict[str, Result], resumed: dict[str, Result]) -> None:
    uninterrupted, result = checkpointed["epochs"], resumed["epoch"]
    assert result["train_losses"] == uninterrupted["train_losses"][16:]
    assert result["parameters"] == uninterrupted["parameters"]


def test_resume_on_two_processes_is_exact(checkpointed: dict[str, Result], resumed: dict[str, Result]) -> None:
    """2 processes of 8: 16 steps per epoch; step_20 is epoch 1 after 4 batches."""
    uninterrupted, result = checkpointed["two"], resumed["two"]
    assert result["train_losses"] == uninterrupted["train_losses"][20:]
    assert result["epochs"] == uninterrupted["epochs"][1:]
    assert result["parameters"] == uninterrupted["parameters"]


def test_resume_with_a_stateful_dataloader_is_exact(checkpointed: dict[str, Result], workdir: Path) -> None:
    """Accelerate's other way: no skip_first_batches, the dataloader's own saved position."""
    uninterrupted = checkpointed["steps"]
    result = run_for_result("checkpointing.py", [
        "--resume_from_checkpoint", str(workdir / "ck_a" / "steps" / "step_18"), "--use_stateful_dataloader",
        "--output_dir", "more",
    ], workdir / "ck_rs")
    assert result["train_losses"] == uninterrupted["train_losses"][18:]
    assert result["parameters"] == uninterrupted["parameters"]


# --------------------------------------------------------------------------- cross_validation.py
@pytest.fixture(scope="module")
def folds(workdir: Path) -> tuple[Result, Result]:
    one, two = wait(
        start("cross_validation.py", ["--num_folds", "3", "--batch_size", "16"], workdir / "cv1"),
        start("cross_validation.py", ["--num_folds", "3", "--batch_size", "8"], workdir / "cv2", processes=2),
    )
    return one, two


def test_cross_validation_trains_every_fold_and_ensembles(folds: tuple[Result, Result]) -> None:
    for result in folds:
        assert [f["fold"] for f in result["folds"]] == [0, 1, 2]
        assert sum(f["valid_size"] for f in result["folds"]) == 256
        assert all(f["train_size"] + f["valid_size"] == 256 for f in result["folds"])
        for fold in result["folds"]:
            assert loss_went_down(fold["train_losses"]), fold["fold"]
            assert fold["validation"]["accuracy"] > 0.75
        assert result["freed"]  # free_memory(model, optimizer) hands back None for each
        assert result["test"]["count"] == 101
        assert result["test"]["accuracy"] > 0.8


def test_cross_validation_on_two_processes_agrees(folds: tuple[Result, Result]) -> None:
    """Not to the last digit: a fold's training set (170 or 171 samples) ends with an uneven batch, which two
    processes average as two means (of 8 and 3 samples) where one process takes one mean of 11."""
    one, two = folds
    assert abs(one["test"]["accuracy"] - two["test"]["accuracy"]) <= 3 / 101
    for a, b in zip(one["folds"], two["folds"]):
        assert abs(a["validation"]["accuracy"] - b["validation"]["accuracy"]) <= 0.05
        assert max_difference(a["parameters"], b["parameters"]) < 0.1


# --------------------------------------------------------------------------- ddp_comm_hook.py
@pytest.fixture(scope="module")
def comm_hook(workdir: Path) -> tuple[Result, Result]:
    one, two = wait(
        start("ddp_comm_hook.py", ["--ddp_comm_hook", "fp16", "--batch_size", "16"], workdir / "hook1"),
        start("ddp_comm_hook.py", ["--ddp_comm_hook", "fp16", "--batch_size", "8"], workdir / "hook2", processes=2),
    )
    return one, two


def test_comm_hook_waits_unused_on_one_process(comm_hook: tuple[Result, Result]) -> None:
    one, _ = comm_hook
    assert one["wrapped"] == "TinyClassifier"
    assert one["comm_hook"] is None
    assert one["ddp_handler"] == "fp16"
    assert loss_went_down(one["train_losses"])


def test_fp16_comm_hook_on_two_processes(comm_hook: tuple[Result, Result]) -> None:
    one, two = comm_hook
    assert two["wrapped"] == "DistributedDataParallel"
    assert two["comm_hook"] == "fp16_compress_hook"
    assert loss_went_down(two["train_losses"])
    # Gradients travel in fp16: close to the full-precision run, not equal to it.
    assert 0 < max_difference(two["parameters"], one["parameters"]) < 1e-3
    assert two["epochs"][-1]["accuracy"] == pytest.approx(one["epochs"][-1]["accuracy"], abs=0.02)


# --------------------------------------------------------------------------- early_stopping.py
@pytest.fixture(scope="module")
def early_stopped(workdir: Path) -> tuple[Result, Result]:
    one, two = wait(
        start("early_stopping.py", ["--patience", "3"], workdir / "stop1"),
        start("early_stopping.py", ["--patience", "2", "--batch_size", "8"], workdir / "stop2", processes=2),
    )
    return one, two


def test_early_stopping_on_one_process(early_stopped: tuple[Result, Result]) -> None:
    result, _ = early_stopped
    (process,) = result["processes"]
    total = result["steps_per_epoch"] * result["num_epochs"]
    assert process["triggered_here"] is not None
    assert process["stopped_at"] == process["triggered_here"] == process["steps"] < total


def test_early_stopping_stops_every_process_at_the_same_step(early_stopped: tuple[Result, Result]) -> None:
    """Each process judges its own loss; the first one to trigger stops both, at that very step."""
    _, result = early_stopped
    processes = result["processes"]
    assert [p["rank"] for p in processes] == [0, 1]
    stops = {p["stopped_at"] for p in processes}
    assert len(stops) == 1, processes
    (stop,) = stops
    triggered = [p["triggered_here"] for p in processes if p["triggered_here"] is not None]
    assert stop == min(triggered) < result["steps_per_epoch"] * result["num_epochs"]
    # With these data one process triggers, the other only follows it (the trigger crossed processes).
    assert any(p["triggered_here"] != stop for p in processes), processes
    assert all(p["steps"] == stop for p in processes)


# --------------------------------------------------------------------------- gradient_accumulation.py, local_sgd.py
@pytest.fixture(scope="module")
def accumulated(workdir: Path) -> dict[str, Result]:
    """1 process x batch 16; 1 process x 2 micro-batches of 8; 2 processes x 2 micro-batches of 4."""
    whole, one, two = wait(
        start("gradient_accumulation.py", ["--batch_size", "16"], workdir / "ga1"),
        start("gradient_accumulation.py", ["--batch_size", "8", "--gradient_accumulation_steps", "2"], workdir / "ga2"),
        start("gradient_accumulation.py", ["--batch_size", "4", "--gradient_accumulation_steps", "2"], workdir / "ga3",
              processes=2),
    )
    return {"whole": whole, "one": one, "two": two}


def test_gradient_accumulation_matches_the_whole_batch(accumulated: dict[str, Result]) -> None:
    whole = accumulated["whole"]
    assert loss_went_down(whole["train_losses"])
    assert whole["epochs"][-1]["accuracy"] > 0.8
    for result in (accumulated["one"], accumulated["two"]):
        assert result["gradient_accumulation_steps"] == 2
        assert result["optimizer_steps"] == whole["optimizer_steps"] == 32
        assert result["last_lr"] == pytest.approx(whole["last_lr"], abs=1e-12)
        assert max_difference(result["parameters"], whole["parameters"]) < PARITY
        assert result["epochs"] == whole["epochs"]


@pytest.fixture(scope="module")
def local_sgd(workdir: Path) -> tuple[Result, Result]:
    one, two = wait(
        start("local_sgd.py", ["--batch_size", "16"], workdir / "lsgd1"),
        start("local_sgd.py", ["--local_sgd_steps", "4", "--batch_size", "8"], workdir / "lsgd2", processes=2),
    )
    return one, two


def test_local_sgd_on_one_process_changes_nothing(local_sgd: tuple[Result, Result],
                                                  accumulated: dict[str, Result]) -> None:
    one, _ = local_sgd
    assert one["diverged_after_first_step"] == [False, False]
    assert one["parameters"] == accumulated["whole"]["parameters"]  # the same training as without LocalSGD


def test_local_sgd_on_two_processes_averages_the_replicas(local_sgd: tuple[Result, Result]) -> None:
    _, two = local_sgd
    assert two["local_sgd_steps"] == 4 and two["local_steps"] == 16
    assert two["diverged_after_first_step"] == [True, True]  # no gradient synchronisation inside the block
    first, second = two["checksums"]
    assert first == second  # leaving the block averaged the parameters: identical on both processes
    assert loss_went_down(two["train_losses"])
    assert two["epochs"][-1]["accuracy"] > 0.8


# --------------------------------------------------------------------------- memory.py, automatic_gradient_accumulation.py
@pytest.fixture(scope="module")
def memory(workdir: Path) -> tuple[Result, Result]:
    """The stand-in device holds 24 samples: 64, 57, 51, 45, 40, 36, 32, 28 and 25 raise OutOfMemoryError."""
    args = ["--batch_size", "64", "--max_device_batch_size", "24"]
    one, two = wait(start("memory.py", args, workdir / "memory1"),
                    start("memory.py", args, workdir / "memory2", processes=2))
    return one, two


@pytest.fixture(scope="module")
def automatic(workdir: Path) -> tuple[Result, Result]:
    args = ["--batch_size", "64", "--max_device_batch_size", "24"]
    one, two = wait(start("automatic_gradient_accumulation.py", args, workdir / "auto1"),
                    start("automatic_gradient_accumulation.py", args, workdir / "auto2", processes=2))
    return one, two


def test_memory_finds_the_batch_size_that_fits(memory: tuple[Result, Result]) -> None:
    for result in memory:
        assert result["attempts"] == shrinking_batch_sizes(64, 24) == [64, 57, 51, 45, 40, 36, 32, 28, 25, 22]
        assert result["batch_size"] == 22
        assert loss_went_down(result["train_losses"])
        assert result["epochs"][-1]["count"] == 101


def test_automatic_gradient_accumulation_makes_up_the_batch(automatic: tuple[Result, Result]) -> None:
    for result in automatic:
        assert result["attempts"] == shrinking_batch_sizes(64, 24)
        assert result["batch_size"] == 22
        assert result["gradient_accumulation_steps"] == 64 // 22 == 2
        # Every 2 batches an optimizer step, and one on the last batch of an odd epoch.
        per_epoch = result["steps_per_epoch"]
        assert result["optimizer_steps"] == 2 * ((per_epoch + 1) // 2)
        assert loss_went_down(result["train_losses"])


# --------------------------------------------------------------------------- gradient_accumulation_for_autoregressive_models.py
def test_token_weighted_accumulation_matches_the_whole_batch(workdir: Path) -> None:
    """8 sentences of uneven lengths per step: 1 process x 8, and 2 processes x (2 micro-batches of 2)."""
    script = "gradient_accumulation_for_autoregressive_models.py"
    whole, distributed = wait(
        start(script, ["--per_device_batch_size", "8"], workdir / "ar1"),
        start(script, ["--per_device_batch_size", "2", "--gradient_accumulation_steps", "2"], workdir / "ar2",
              processes=2),
    )
    assert whole["updates_per_epoch"] == distributed["updates_per_epoch"] == 16
    assert distributed["gradient_accumulation_steps"] == 2 and distributed["num_processes"] == 2
    assert loss_went_down(whole["train_losses"])
    assert whole["evaluations"][-1]["perplexity"] < whole["evaluations"][0]["perplexity"]
    # The step's loss is the mean over all its tokens, however they were split.
    assert distributed["train_losses"] == pytest.approx(whole["train_losses"], rel=1e-5)
    assert distributed["grad_norms"] == pytest.approx(whole["grad_norms"], rel=1e-4)
    assert max_difference(distributed["parameters"], whole["parameters"]) < 2e-5


# --------------------------------------------------------------------------- multi_process_metrics.py
def test_metrics_over_two_processes_count_each_sample_once(workdir: Path) -> None:
    one, two = wait(
        start("multi_process_metrics.py", ["--batch_size", "16"], workdir / "mpm1"),
        start("multi_process_metrics.py", ["--batch_size", "8"], workdir / "mpm2", processes=2),
    )
    assert two["dataset_length"] == 101 and two["eval_batches"] == 2  # 101 samples, 32 per batch and process
    for epoch_one, epoch_two in zip(one["epochs"], two["epochs"]):
        assert epoch_two["gather"]["count"] == epoch_two["gather_for_metrics"]["count"] == 101
        assert epoch_two["same_samples"]
        assert epoch_two["gather"] == epoch_two["gather_for_metrics"] == epoch_one["gather_for_metrics"]
    assert max_difference(one["parameters"], two["parameters"]) < PARITY
    assert loss_went_down(two["train_losses"])


# --------------------------------------------------------------------------- profiler.py
def test_profiler_writes_a_trace_per_process(workdir: Path) -> None:
    args = ["--batch_size", "32", "--output_trace_dir", "traces"]
    results = wait(start("profiler.py", ["--record_shapes", *args], workdir / "prof1"),
                   start("profiler.py", ["--profile_memory", "--with_flops", *args], workdir / "prof2", processes=2))
    for processes, result in zip((1, 2), results):
        directory = workdir / f"prof{processes}" / "traces"
        traces = sorted(p.name for p in directory.iterdir())
        assert traces == [f"profile_{rank}.json" for rank in range(processes)]
        for name in traces:
            events = json.loads((directory / name).read_text())["traceEvents"]
            assert {"aten::addmm", "aten::gelu"} <= {event.get("name", "") for event in events}, name
        assert "aten::addmm" in result["operators"]


# --------------------------------------------------------------------------- schedule_free.py
def test_schedule_free(workdir: Path) -> None:
    """Trains on 1 and 2 processes (when schedulefree is installed); without the library (hidden here) the
    script stops with Accelerate's ImportError, as when ``is_schedulefree_available()`` is false."""
    hide = ("import runpy, sys; sys.modules['schedulefree'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    hidden = start("schedule_free.py", [], workdir / "sf0", python=["-c", hide, str(BY_FEATURE / "schedule_free.py")],
                   result=False)
    try:
        import schedulefree  # noqa: F401
    except ImportError:
        runs = []
    else:
        runs = [start("schedule_free.py", ["--batch_size", "16"], workdir / "sf1"),
                start("schedule_free.py", ["--batch_size", "8"], workdir / "sf2", processes=2)]
    code, output = hidden.finish(check=False)
    assert code != 0
    assert "ImportError: This example requires the `schedulefree` library" in output
    assert "pip install schedulefree" in output
    if not runs:
        pytest.skip("schedulefree is not installed: only the ImportError was checked")
    one, two = wait(*runs)
    for result in (one, two):
        assert result["optimizer"] == "AdamWScheduleFree"
        assert result["train_mode"] is False  # optimizer.eval() reached the optimizer through prepare's wrapper
        assert loss_went_down(result["train_losses"])
        assert result["epochs"][-1]["accuracy"] > 0.8
    assert max_difference(one["parameters"], two["parameters"]) < PARITY


# --------------------------------------------------------------------------- tracking.py
def _scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def test_tracking_writes_tensorboard_events(workdir: Path) -> None:
    pytest.importorskip("tensorboard")
    args = ["--with_tracking", "--report_to", "tensorboard", "--project_dir", "logs"]
    results = wait(start("tracking.py", [*args, "--batch_size", "16"], workdir / "track1"),
                   start("tracking.py", [*args, "--batch_size", "8"], workdir / "track2", processes=2))
    for processes, result in zip((1, 2), results):
        run_directory = workdir / f"track{processes}" / "logs" / "tracking"
        assert len(list(run_directory.glob("events.out.tfevents.*"))) == 1  # only the main process writes
        scalars = _scalars(run_directory)
        assert [step for step, _ in scalars["train_loss"]] == [0, 1, 2]
        for key in ("accuracy", "f1", "train_loss", "epoch"):
            expected = [values[key] for values in result["logged"]]
            assert [value for _, value in scalars[key]] == pytest.approx(expected, rel=1e-6), (processes, key)
        losses = [value for _, value in scalars["train_loss"]]
        assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- megatron_lm_gpt_pretraining.py
PRETRAINING = ["--per_device_train_batch_size", "5", "--gradient_accumulation_steps", "2"]


@pytest.fixture(scope="module")
def pretrained(workdir: Path) -> tuple[Result, Result]:
    """1 process: 2 epochs of 36 batches of 5 blocks, 2 micro-batches per step: 36 steps, saved at step 24;
    2 processes: the defaults."""
    one, two = wait(
        start("megatron_lm_gpt_pretraining.py", [*PRETRAINING, "--checkpointing_steps", "24", "--output_dir", "gpt"],
              workdir / "gpt1"),
        start("megatron_lm_gpt_pretraining.py", ["--output_dir", "gpt"], workdir / "gpt2", processes=2),
    )
    return one, two


def test_pretraining_says_megatron_lm_is_not_supported_and_trains(pretrained: tuple[Result, Result],
                                                                  workdir: Path) -> None:
    one, two = pretrained
    for result in (one, two):
        assert "MegatronLMPlugin is not supported by plait" in result["megatron_lm"]
        assert "fsdp" in result["megatron_lm"]
        assert loss_went_down(result["train_losses"])
        perplexities = [e["perplexity"] for e in result["evaluations"]]
        assert perplexities[-1] < perplexities[0]
    assert one["distributed_type"] == "NO" and two["distributed_type"] == "MULTI_CPU"
    assert one["completed_steps"] == one["max_train_steps"] == 36
    output = workdir / "gpt1" / "gpt"
    assert {"step_24", "pytorch_model.bin", "config.json", "all_results.json"} <= {p.name for p in output.iterdir()}
    assert read_result(output / "all_results.json")["perplexity"] == one["evaluations"][-1]["perplexity"]


@pytest.fixture(scope="module")
def pretraining_resumed(pretrained: tuple[Result, Result], workdir: Path) -> tuple[Result, Result]:
    """From step_24 (48 batches: epoch 1 after 12 batches), the model built under init_empty_weights; and
    alongside, deepspeed_with_config_support.py without DeepSpeed."""
    resumed, clm = wait(
        start("megatron_lm_gpt_pretraining.py", [*PRETRAINING, "--output_dir", "gpt", "--resume_from_checkpoint",
                                                 str(workdir / "gpt1" / "gpt" / "step_24")], workdir / "gpt3"),
        start("deepspeed_with_config_support.py", ["--output_dir", "clm", "--load_best_model"], workdir / "clm"),
    )
    return resumed, clm


def test_pretraining_resumes_on_empty_weights_exactly(pretrained: tuple[Result, Result],
                                                      pretraining_resumed: tuple[Result, Result]) -> None:
    one, _ = pretrained
    resumed, _ = pretraining_resumed
    assert resumed["resumed_on_meta"]
    assert resumed["completed_steps"] == 36
    assert resumed["train_losses"] == one["train_losses"][24:]
    assert resumed["parameters"] == one["parameters"]


# --------------------------------------------------------------------------- deepspeed_with_config_support.py (no DeepSpeed)
def test_deepspeed_script_without_deepspeed_keeps_the_best_checkpoint(pretraining_resumed: tuple[Result, Result],
                                                                      workdir: Path) -> None:
    """Without a DeepSpeed config the script trains with AdamW and its own scheduler (tests/zero runs DeepSpeed)."""
    _, clm = pretraining_resumed
    assert clm["optimizer_cls"] == "AdamW" and clm["distributed_type"] == "NO"
    assert clm["final_perplexity"] == clm["best_metric"] == min(e["perplexity"] for e in clm["evaluations"])
    assert loss_went_down(clm["train_losses"])
    assert (workdir / "clm" / "clm" / "best_checkpoint").is_dir()
    assert read_result(workdir / "clm" / "clm" / "all_results.json")["perplexity"] == clm["final_perplexity"]
