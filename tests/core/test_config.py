"""The configuration a run resolves: ``Accelerator`` arguments over ``PLAIT_*`` variables over the YAML
file over defaults; errors that name the file, line, variable and closest valid key; and HF
Accelerate's ``default_config.yaml`` read as it is.

``conftest.isolated_config`` points ``XDG_CONFIG_HOME`` at an empty directory and clears every
``PLAIT_*`` variable, so these tests never see the developer's own configuration.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from plait import Accelerator
from plait.config import Config, default_config_path, resolve_config
from plait.errors import ConfigError, PluginError
from plait.plugins import installed_backends


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``config_file(text)`` writes a YAML file and points ``PLAIT_CONFIG_FILE`` at it."""

    def make(text: str, name: str = "run.yaml") -> Path:
        path = write(tmp_path / name, text)
        monkeypatch.setenv("PLAIT_CONFIG_FILE", str(path))
        return path

    return make


# --------------------------------------------------------------------------- #
# precedence
# --------------------------------------------------------------------------- #

# key, default, YAML file value, PLAIT_* value (a string), Accelerator argument: each differs from the one before.
LAYERS = [
    ("mixed_precision", "no", "fp16", "bf16", "no"),
    ("gradient_accumulation_steps", 1, 4, "2", 8),
    ("cpu", False, True, "false", True),
    ("split_batches", False, True, "0", True),
    ("even_batches", True, False, "yes", False),
    ("step_scheduler_with_optimizer", True, False, "true", False),
    ("device_placement", True, False, "on", False),
    ("project_dir", None, "/runs/from-file", "/runs/from-env", "/runs/from-argument"),
]


@pytest.mark.parametrize(("key", "default", "in_file", "in_env", "argument"), LAYERS, ids=[row[0] for row in LAYERS])
def test_arguments_beat_environment_beat_file_beat_defaults(
    key, default, in_file, in_env, argument, config_file, monkeypatch
):
    env_value = {"false": False, "0": False, "yes": True, "true": True, "on": True, "2": 2}.get(in_env, in_env)

    assert getattr(Accelerator().config, key) == default

    config_file(yaml.safe_dump({key: in_file}))
    assert getattr(Accelerator().config, key) == in_file

    monkeypatch.setenv(f"PLAIT_{key.upper()}", in_env)
    assert getattr(Accelerator().config, key) == env_value

    assert getattr(Accelerator(**{key: argument}).config, key) == argument


def test_the_accelerator_runs_with_the_resolved_values(config_file, monkeypatch):
    config_file(
        """
        mixed_precision: fp16
        gradient_accumulation_steps: 4
        """
    )
    monkeypatch.setenv("PLAIT_MIXED_PRECISION", "bf16")

    accelerator = Accelerator()

    assert accelerator.mixed_precision == "bf16"
    assert accelerator.gradient_accumulation_steps == 4
    assert accelerator.scaler is None  # bf16 needs no gradient scaler; fp16 would have one
    with accelerator.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_the_default_file_is_read_from_xdg_config_home(isolated_config):
    assert default_config_path() == isolated_config
    write(isolated_config, "gradient_accumulation_steps: 3\n")

    accelerator = Accelerator()

    assert accelerator.gradient_accumulation_steps == 3
    assert accelerator.config.config_file == str(isolated_config)


def test_plait_config_file_replaces_the_default_file(isolated_config, config_file):
    write(isolated_config, "gradient_accumulation_steps: 3\nmixed_precision: bf16\n")
    chosen = config_file("gradient_accumulation_steps: 5\n")

    config = Accelerator().config

    assert config.gradient_accumulation_steps == 5
    assert config.mixed_precision == "no"  # nothing of the default file is merged in
    assert config.config_file == str(chosen)


def test_resolve_config_reads_only_the_environment_it_is_given(tmp_path, monkeypatch):
    theirs = write(tmp_path / "theirs" / "plait" / "default_config.yaml", "gradient_accumulation_steps: 6\n")
    monkeypatch.setenv("PLAIT_GRADIENT_ACCUMULATION_STEPS", "2")

    config = resolve_config({}, environ={"XDG_CONFIG_HOME": str(tmp_path / "theirs")})

    assert config.gradient_accumulation_steps == 6
    assert config.config_file == str(theirs)


def test_a_missing_plait_config_file_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere.yaml"
    monkeypatch.setenv("PLAIT_CONFIG_FILE", str(missing))

    with pytest.raises(ConfigError, match=re.escape(f"PLAIT_CONFIG_FILE='{missing}' does not exist")):
        Accelerator()


def test_an_empty_file_gives_the_defaults(config_file):
    path = config_file("# nothing yet\n")

    assert Accelerator().config == Config(config_file=str(path))


def test_lists_and_sections_from_the_environment():
    config = resolve_config(
        {}, environ={"PLAIT_LOG_WITH": "tensorboard, wandb", "PLAIT_FSDP": '{"reshard_after_forward": false}'}
    )

    assert config.log_with == ("tensorboard", "wandb")
    assert config.section("fsdp") == {"reshard_after_forward": False}


def test_sections_merge_file_then_environment(config_file, monkeypatch):
    config_file(
        """
        fsdp:
          reshard_after_forward: true
          offload_params: false
        """
    )
    monkeypatch.setenv("PLAIT_FSDP", '{"offload_params": true}')

    config = resolve_config({})

    assert config.section("fsdp") == {"reshard_after_forward": True, "offload_params": True}
    assert config.section("zero") == {}


def test_the_config_round_trips_through_its_yaml_form(config_file):
    original = resolve_config(
        {
            "backend": "fsdp",
            "mixed_precision": "bf16",
            "gradient_accumulation_steps": 2,
            "log_with": ("tensorboard",),
            "num_processes": 8,
            "main_process_port": 29500,
        }
    )
    section = {"reshard_after_forward": False}

    path = config_file(yaml.safe_dump(original.to_dict() | {"fsdp": section}))
    read_back = resolve_config({})

    assert read_back == dataclasses.replace(original, sections={"fsdp": section}, config_file=str(path))


# --------------------------------------------------------------------------- #
# errors: the value, where it came from, what was expected
# --------------------------------------------------------------------------- #


def test_an_unknown_key_names_the_file_the_line_and_the_closest_key(config_file):
    path = config_file(
        """
        backend: single
        gradient_accumulation_steps: 2
        mixed_precison: fp16
        """
    )

    with pytest.raises(ConfigError) as raised:
        Accelerator()

    message = str(raised.value)
    assert message.startswith(f"config file {path}, line 3: unknown key 'mixed_precison'")
    assert "(did you mean 'mixed_precision'?)" in message


def test_a_misspelled_backend_section_suggests_the_section(config_file):
    path = config_file("backend: fsdp\nfdsp:\n  offload_params: true\n")

    with pytest.raises(ConfigError, match=re.escape(f"config file {path}, line 2: unknown key 'fdsp' (did you mean 'fsdp'?)")):
        Accelerator()


def test_malformed_yaml_names_the_file_and_the_line(config_file):
    path = config_file(
        """
        mixed_precision: fp16
        gradient_accumulation_steps: [4
        cpu: true
        """
    )

    with pytest.raises(ConfigError) as raised:
        Accelerator()

    message = str(raised.value)
    assert message.startswith(f"config file {path}, line ")
    assert "malformed YAML" in message
    line = int(message.split(", line ")[1].split(":")[0])
    assert line in (2, 3)


def test_a_file_that_is_not_a_mapping_is_refused(config_file):
    path = config_file("- mixed_precision\n- fp16\n")

    with pytest.raises(ConfigError, match=re.escape(f"config file {path}: expected a mapping of keys to values, found list")):
        Accelerator()


def test_a_section_that_is_not_a_mapping_is_refused(config_file):
    config_file("zero: 3\n")

    with pytest.raises(ConfigError, match=r"line 1: section 'zero' must be a mapping of options, found 3"):
        Accelerator()


def test_the_built_in_backend_takes_no_options(config_file):
    config_file("single:\n  buckets: 4\n")

    with pytest.raises(ConfigError, match=r"backend 'single' takes no options, but its section sets 'buckets'"):
        Accelerator()


def test_an_unknown_mixed_precision_lists_the_valid_values():
    with pytest.raises(ConfigError) as raised:
        Accelerator(mixed_precision="fp32")

    assert "mixed_precision='fp32' is not valid: expected one of 'no', 'fp16', 'bf16'" in str(raised.value)

    with pytest.raises(ConfigError, match=r"\(did you mean 'bf16'\?\)"):
        Accelerator(mixed_precision="bf61")


@pytest.mark.parametrize("steps", [0, -2])
def test_gradient_accumulation_steps_must_be_at_least_one(steps):
    with pytest.raises(ConfigError, match=rf"gradient_accumulation_steps={steps} is not valid: expected a whole number of at least 1"):
        Accelerator(gradient_accumulation_steps=steps)


BAD_VALUES = [
    ("mixed_precision", "fp32", "expected one of 'no', 'fp16', 'bf16'"),
    ("gradient_accumulation_steps", "0", "expected a whole number of at least 1"),
    ("gradient_accumulation_steps", "two", "expected a whole number"),
    ("num_processes", "-1", "expected a whole number of at least 1"),
    ("cpu", "maybe", "expected true or false"),
]


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_a_bad_environment_value_names_the_variable(key, value, expected, monkeypatch):
    monkeypatch.setenv(f"PLAIT_{key.upper()}", value)

    with pytest.raises(ConfigError) as raised:
        Accelerator()

    message = str(raised.value)
    assert message.startswith(f"environment variable PLAIT_{key.upper()}: {key}=")
    assert expected in message


@pytest.mark.parametrize(("key", "value", "expected"), BAD_VALUES)
def test_a_bad_file_value_names_the_file_and_the_line(key, value, expected, config_file):
    # Values as a user types them: unquoted, so YAML reads numbers as numbers.
    path = config_file(f"debug: false\n{key}: {value}\n")

    with pytest.raises(ConfigError) as raised:
        Accelerator()

    message = str(raised.value)
    assert message.startswith(f"config file {path}, line 2: {key}=")
    assert expected in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("{'offload_params': 1}", "is not valid JSON"), ("[1, 2]", "expected a JSON object of fsdp options")],
)
def test_a_bad_section_variable_names_the_variable(raw, expected, monkeypatch):
    monkeypatch.setenv("PLAIT_FSDP", raw)

    with pytest.raises(ConfigError, match=rf"environment variable PLAIT_FSDP=.* {expected}"):
        Accelerator()


def test_unquoted_no_in_yaml_means_no_mixed_precision(config_file):
    # YAML 1.1 reads `no` as false; users write it unquoted all the time.
    config_file("mixed_precision: no\n")

    assert Accelerator().mixed_precision == "no"


def test_machine_rank_must_be_one_of_the_machines():
    with pytest.raises(ConfigError, match=r"machine_rank=2 is not valid: expected 0..1 for num_machines=2"):
        Config(num_machines=2, machine_rank=2)


# --------------------------------------------------------------------------- #
# HF Accelerate's default_config.yaml
# --------------------------------------------------------------------------- #

# As `accelerate config` (1.x) writes them.
ACCELERATE_SINGLE_CPU = """
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: 'NO'
downcast_bf16: 'no'
enable_cpu_affinity: false
gpu_ids: all
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 1
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: true
"""

ACCELERATE_MULTI_GPU = """
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: MULTI_GPU
downcast_bf16: 'no'
enable_cpu_affinity: false
gpu_ids: all
machine_rank: 1
main_process_ip: 10.0.0.1
main_process_port: 29500
main_training_function: main
mixed_precision: fp16
num_machines: 2
num_processes: 16
rdzv_backend: c10d
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""

ACCELERATE_FSDP = """
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
enable_cpu_affinity: false
fsdp_config:
  fsdp_activation_checkpointing: false
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_cpu_ram_efficient_loading: true
  fsdp_offload_params: false
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: SHARDED_STATE_DICT
  fsdp_transformer_layer_cls_to_wrap: LlamaDecoderLayer
  fsdp_version: 2
gpu_ids: all
machine_rank: 0
main_training_function: main
mixed_precision: bf16
num_machines: 1
num_processes: 8
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""

ACCELERATE_DEEPSPEED = """
compute_environment: LOCAL_MACHINE
debug: false
deepspeed_config:
  deepspeed_multinode_launcher: standard
  gradient_accumulation_steps: 4
  gradient_clipping: 1.0
  offload_optimizer_device: cpu
  offload_param_device: none
  zero3_init_flag: false
  zero_stage: 2
distributed_type: DEEPSPEED
downcast_bf16: 'no'
enable_cpu_affinity: false
machine_rank: 0
main_training_function: main
mixed_precision: bf16
num_machines: 1
num_processes: 4
rdzv_backend: static
same_network: true
tpu_env: []
tpu_use_cluster: false
tpu_use_sudo: false
use_cpu: false
"""


def test_accelerate_multi_gpu_config_maps_to_ddp(config_file):
    config_file(ACCELERATE_MULTI_GPU, name="default_config.yaml")

    config = resolve_config({})

    assert config.backend == "ddp"
    assert (config.mixed_precision, config.num_processes, config.num_machines, config.machine_rank) == ("fp16", 16, 2, 1)
    assert (config.main_process_ip, config.main_process_port, config.cpu) == ("10.0.0.1", 29500, False)
    assert config.sections == {}


def test_accelerate_fsdp_config_maps_to_the_fsdp_section(config_file):
    config_file(ACCELERATE_FSDP, name="default_config.yaml")

    config = resolve_config({})

    assert (config.backend, config.mixed_precision, config.num_processes) == ("fsdp", "bf16", 8)
    assert config.section("fsdp") == {
        "activation_checkpointing": False,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "cpu_ram_efficient_loading": True,
        "offload_params": False,
        "reshard_after_forward": True,
        "state_dict_type": "SHARDED_STATE_DICT",
        "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "version": 2,
    }


@pytest.mark.parametrize(
    ("line", "reshard"),
    [
        ("fsdp_sharding_strategy: FULL_SHARD", True),
        ("fsdp_sharding_strategy: 2", False),  # older files number the strategies: 2 is SHARD_GRAD_OP
        ("fsdp_reshard_after_forward: SHARD_GRAD_OP", False),  # FSDP1 strategy under the FSDP2 key (accelerate >= 1.6)
        ("fsdp_reshard_after_forward: HYBRID_SHARD_ZERO2", False),
        ("fsdp_reshard_after_forward: false", False),
    ],
)
def test_accelerate_fsdp_sharding_strategies_map_to_reshard_after_forward(line, reshard, config_file):
    config_file(f"distributed_type: FSDP\nfsdp_config:\n  {line}\n")

    assert resolve_config({}).section("fsdp") == {"reshard_after_forward": reshard}


def test_accelerate_deepspeed_config_maps_to_the_zero_section(config_file):
    config_file(ACCELERATE_DEEPSPEED, name="default_config.yaml")

    config = resolve_config({})

    assert (config.backend, config.gradient_accumulation_steps, config.num_processes) == ("zero", 4, 4)
    # The multi-node launcher setting is the launcher's, not the engine's: it is not passed to the backend.
    assert config.section("zero") == {
        "stage": 2,
        "gradient_clipping": 1.0,
        "offload_optimizer_device": "cpu",
        "offload_param_device": "none",
        "zero3_init": False,
    }


def test_accelerate_config_values_are_overridden_by_the_environment(config_file, monkeypatch):
    config_file(ACCELERATE_FSDP)
    monkeypatch.setenv("PLAIT_MIXED_PRECISION", "no")
    monkeypatch.setenv("PLAIT_NUM_PROCESSES", "2")

    config = resolve_config({})

    assert (config.backend, config.mixed_precision, config.num_processes) == ("fsdp", "no", 2)


def test_accelerate_config_with_an_uninstalled_backend_says_how_to_install_it(config_file):
    if "ddp" in installed_backends():
        pytest.skip("plait-ddp is installed in this environment")
    config_file(ACCELERATE_MULTI_GPU)

    with pytest.raises(PluginError, match=r"pip install plait\[ddp\]"):
        Accelerator()


def test_accelerate_distributed_type_without_a_backend_is_an_error(config_file):
    path = config_file("compute_environment: LOCAL_MACHINE\ndistributed_type: MEGATRON_LM\n")

    with pytest.raises(ConfigError) as raised:
        resolve_config({})

    message = str(raised.value)
    assert f"config file {path}: distributed_type 'MEGATRON_LM' has no plait backend" in message
    assert "MULTI_GPU, FSDP, DEEPSPEED" in message


def test_accelerate_keys_plait_does_not_know_are_ignored_with_a_warning(config_file):
    config_file(ACCELERATE_SINGLE_CPU + "some_future_key: 1\n")

    with pytest.warns(UserWarning, match=r"ignoring HF Accelerate keys plait does not use: some_future_key"):
        config = resolve_config({})

    assert config.backend == "single"


def test_a_bad_accelerate_value_names_the_line_of_its_accelerate_key(config_file):
    path = config_file(ACCELERATE_SINGLE_CPU.replace("use_cpu: true", "use_cpu: maybe"))

    with pytest.raises(ConfigError, match=re.escape(f"config file {path}, line 17: cpu='maybe' is not valid")):
        resolve_config({})


@pytest.mark.parametrize("distributed_type", ["'NO'", "NO"])
def test_an_accelerate_single_process_config_trains_end_to_end(distributed_type, isolated_config, regression):
    # The file `accelerate config` leaves at its default place, copied to plait's default place.
    write(isolated_config, ACCELERATE_SINGLE_CPU.replace("distributed_type: 'NO'", f"distributed_type: {distributed_type}"))

    accelerator = Accelerator()
    model, losses = regression.fit(accelerator)

    reference, optimizer, loader = regression.make()
    for _ in range(2):
        for x, y in loader:
            torch.nn.functional.mse_loss(reference(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()

    assert (accelerator.backend, accelerator.config.cpu, accelerator.mixed_precision) == ("single", True, "no")
    assert accelerator.distributed_type == "NO"
    assert accelerator.device == torch.device("cpu")
    assert losses[-1] < losses[0] / 10
    torch.testing.assert_close(dict(model.state_dict()), dict(reference.state_dict()))
