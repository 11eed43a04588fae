"""An argument passed always wins, even when it equals its default; every value set knows its source; and one
function chooses the backend, weighing the backend's source against the process count's."""

from __future__ import annotations

import pytest

from plait import Accelerator
from plait.config import ARGUMENT, DEFAULT, ENVIRONMENT, FILE, resolve_config
from plait.errors import ConfigError
from plait.plugins import choose_backend

FILE_VALUES = "gradient_accumulation_steps: 4\ncpu: true\nsplit_batches: true\neven_batches: false\n"


@pytest.fixture
def config_file(isolated_config):
    isolated_config.parent.mkdir(parents=True, exist_ok=True)
    isolated_config.write_text(FILE_VALUES, encoding="utf-8")
    return isolated_config


def test_arguments_equal_to_their_defaults_still_win_over_the_config_file(config_file):
    accelerator = Accelerator(gradient_accumulation_steps=1, cpu=False, split_batches=False, even_batches=True)

    assert accelerator.gradient_accumulation_steps == 1
    assert accelerator.config.cpu is False
    assert accelerator.split_batches is False
    assert accelerator.even_batches is True


def test_arguments_not_passed_fall_through_to_the_file(config_file):
    accelerator = Accelerator()

    assert accelerator.gradient_accumulation_steps == 4
    assert accelerator.config.cpu is True
    assert accelerator.split_batches is True
    assert accelerator.even_batches is False


def test_arguments_equal_to_their_defaults_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("PLAIT_GRADIENT_ACCUMULATION_STEPS", "3")
    monkeypatch.setenv("PLAIT_DEVICE_PLACEMENT", "false")

    assert Accelerator().gradient_accumulation_steps == 3
    accelerator = Accelerator(gradient_accumulation_steps=1, device_placement=True)
    assert accelerator.gradient_accumulation_steps == 1
    assert accelerator.device_placement is True


def test_positional_arguments_count_as_passed(config_file):
    accelerator = Accelerator(True, False, None, 1)  # device_placement, split_batches, mixed_precision, steps

    assert accelerator.split_batches is False
    assert accelerator.gradient_accumulation_steps == 1


def test_none_for_mixed_precision_or_backend_means_not_given(monkeypatch):
    monkeypatch.setenv("PLAIT_MIXED_PRECISION", "bf16")

    assert Accelerator(mixed_precision=None, backend=None, cpu=True).mixed_precision == "bf16"


def test_every_value_set_records_its_source(config_file, monkeypatch):
    monkeypatch.setenv("PLAIT_CPU", "false")
    config = resolve_config({"split_batches": False})

    assert config.source_rank("gradient_accumulation_steps") == FILE
    assert config.source_of("gradient_accumulation_steps") == f"config file {config_file}, line 1"
    assert config.source_rank("cpu") == ENVIRONMENT
    assert config.source_of("cpu") == "environment variable PLAIT_CPU=false"
    assert config.source_rank("split_batches") == ARGUMENT
    assert config.source_of("split_batches") == "Accelerator(split_batches=False)"
    assert config.source_rank("mixed_precision") == DEFAULT
    assert config.source_of("mixed_precision") == "the default"


@pytest.mark.parametrize(
    ("backend_layer", "processes", "expected"),
    [
        (None, 1, "single"),
        (None, 2, "ddp"),
        ("file", 2, "ddp"),  # the process count outranks a single-process backend from the file
        ("environment", 2, "ddp"),
        ("file", 1, "single"),
    ],
)
def test_the_backend_is_chosen_by_one_function(backend_layer, processes, expected, isolated_config, monkeypatch):
    if backend_layer == "file":
        isolated_config.parent.mkdir(parents=True, exist_ok=True)
        isolated_config.write_text("backend: single\n", encoding="utf-8")
    elif backend_layer == "environment":
        monkeypatch.setenv("PLAIT_BACKEND", "single")

    assert choose_backend(resolve_config(), processes, "--num-processes 2", ARGUMENT) == expected


def test_a_single_process_backend_given_as_strongly_as_the_process_count_is_refused_naming_both():
    config = resolve_config({"backend": "single"})

    with pytest.raises(ConfigError) as caught:
        choose_backend(config, 2, "--num-processes 2", ARGUMENT)

    message = str(caught.value)
    assert "backend 'single' (Accelerator(backend='single')) runs one process" in message
    assert "but --num-processes 2 asks for 2" in message
    assert "use backend 'ddp' (pip install plait[ddp])" in message
