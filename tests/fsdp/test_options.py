"""The ``fsdp:`` section: its keys (HF Accelerate's), bad input, and the command-line hooks. No processes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from plait import Accelerator
from plait.errors import ConfigError

# What `accelerate config` writes for FSDP (Accelerate 1.x), FSDP1-era keys included.
ACCELERATE_FILE = """\
compute_environment: LOCAL_MACHINE
debug: false
distributed_type: FSDP
downcast_bf16: 'no'
fsdp_config:
  fsdp_activation_checkpointing: true
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_backward_prefetch: BACKWARD_PRE
  fsdp_cpu_ram_efficient_loading: true
  fsdp_forward_prefetch: false
  fsdp_offload_params: false
  fsdp_sharding_strategy: SHARD_GRAD_OP
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_sync_module_states: true
  fsdp_transformer_layer_cls_to_wrap: BertLayer,BertAttention
  fsdp_use_orig_params: true
  fsdp_version: 2
machine_rank: 0
main_training_function: main
mixed_precision: 'no'
num_machines: 1
num_processes: 1
rdzv_backend: static
same_network: true
use_cpu: true
"""


def test_an_accelerate_config_file_becomes_fsdp_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from plait_fsdp import FSDPOptions

    path = tmp_path / "default_config.yaml"
    path.write_text(ACCELERATE_FILE)
    monkeypatch.setenv("PLAIT_CONFIG_FILE", str(path))
    accelerator = Accelerator()
    assert accelerator.backend == "fsdp"
    options = accelerator.backend_options
    assert isinstance(options, FSDPOptions)
    assert options.auto_wrap_policy == "TRANSFORMER_BASED_WRAP"
    assert options.transformer_layer_cls_to_wrap == ("BertLayer", "BertAttention")
    assert options.reshard_after_forward is False  # SHARD_GRAD_OP
    assert options.activation_checkpointing is True
    assert options.cpu_ram_efficient_loading is True
    assert options.state_dict_type == "FULL_STATE_DICT"
    assert dict(options.ignored) == {"backward_prefetch": "BACKWARD_PRE", "forward_prefetch": False,
                                     "sync_module_states": True, "use_orig_params": True, "version": 2}
    # As HF Accelerate builds one from its launcher's settings: accelerator.state.fsdp_plugin describes the run.
    plugin = accelerator.state.fsdp_plugin
    assert plugin is accelerator.fsdp_plugin and plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ("BertLayer", "BertAttention")
    assert (plugin.reshard_after_forward, plugin.state_dict_type) == (False, "FULL_STATE_DICT")
    assert str(accelerator.distributed_type) == "FSDP"


def test_the_plait_fsdp_variable_and_arguments_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    """What `plait launch --fsdp-...` hands to the workers (PLAIT_FSDP), under a dict given in code."""
    monkeypatch.setenv("PLAIT_BACKEND", "fsdp")
    monkeypatch.setenv("PLAIT_FSDP", '{"min_num_params": 500, "offload_params": true}')
    options = Accelerator(backend_options={"offload_params": False}).backend_options
    assert (options.wrap_policy, options.min_num_params, options.offload_params) == ("SIZE_BASED_WRAP", 500, False)
    monkeypatch.setenv("PLAIT_FSDP", '{"min_num_parms": 500}')
    with pytest.raises(ConfigError, match="did you mean 'min_num_params'"):
        Accelerator()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({}, {"wrap_policy": "NO_WRAP", "reshard_after_forward": True, "state_dict_type": "SHARDED_STATE_DICT"}),
        ({"transformer_layer_cls_to_wrap": ["GPT2Block"]}, {"wrap_policy": "TRANSFORMER_BASED_WRAP"}),
        ({"min_num_params": "1000"}, {"wrap_policy": "SIZE_BASED_WRAP", "min_num_params": 1000}),
        ({"auto_wrap_policy": "no_wrap"}, {"wrap_policy": "NO_WRAP"}),
        ({"fsdp_sharding_strategy": "FULL_SHARD"}, {"reshard_after_forward": True}),
        ({"sharding_strategy": 2}, {"reshard_after_forward": False}),
        ({"reshard_after_forward": "false", "offload_params": "true"},
         {"reshard_after_forward": False, "offload_params": True}),
        ({"state_dict_type": "full_state_dict"}, {"state_dict_type": "FULL_STATE_DICT"}),
    ],
)
def test_section_values(section: dict[str, Any], expected: dict[str, Any]) -> None:
    from plait_fsdp import FSDPOptions

    options = FSDPOptions.from_section(section)
    for name, value in expected.items():
        assert getattr(options, name) == value


def test_local_state_dict_is_mapped_to_sharded_with_a_warning() -> None:
    from plait_fsdp import FSDPOptions

    with pytest.warns(UserWarning, match="LOCAL_STATE_DICT"):
        assert FSDPOptions.from_section({"state_dict_type": "LOCAL_STATE_DICT"}).sharded_state


def test_an_options_object_is_used_as_it_is() -> None:
    import plait_fsdp
    from plait_fsdp import FSDPOptions

    options = FSDPOptions(min_num_params=10)
    assert FSDPOptions.from_section(options) is options
    assert plait_fsdp.plait_backend_options("fsdp", options) is options
    assert plait_fsdp.plait_backend_options("ddp", {}) is None


@pytest.mark.parametrize(
    ("section", "names"),
    [
        ({"transformer_layer_cls_to_wrap": "Block", "min_num_params": 100},
         ["transformer_layer_cls_to_wrap", "min_num_params", "remove one"]),
        ({"auto_wrap_policy": "NO_WRAP", "transformer_layer_cls_to_wrap": "Block"},
         ["NO_WRAP", "transformer_layer_cls_to_wrap='Block'"]),
        ({"auto_wrap_policy": "SIZE_BASED_WRAP", "transformer_layer_cls_to_wrap": "Block"},
         ["SIZE_BASED_WRAP", "transformer_layer_cls_to_wrap"]),
        ({"auto_wrap_policy": "SIZE_BASED_WRAP"}, ["SIZE_BASED_WRAP", "needs min_num_params"]),
        ({"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "min_num_params": 5}, ["TRANSFORMER_BASED_WRAP", "min_num_params=5"]),
        ({"activation_checkpointing": True}, ["activation_checkpointing=true", "NO_WRAP"]),
    ],
)
def test_options_that_cannot_go_together_name_both(section: dict[str, Any], names: list[str]) -> None:
    from plait_fsdp import FSDPOptions

    with pytest.raises(ConfigError) as info:
        FSDPOptions.from_section(section)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("section", "fragments"),
    [
        ({"reshard_after_froward": True}, ["unknown fsdp option 'reshard_after_froward'", "did you mean 'reshard_after_forward'"]),
        ({"auto_wrap_policy": "TRANSFORMER_WRAP"}, ["auto_wrap_policy='TRANSFORMER_WRAP'", "TRANSFORMER_BASED_WRAP"]),
        ({"offload_params": "maybe"}, ["offload_params='maybe'", "expected true or false"]),
        ({"min_num_params": -3}, ["min_num_params=-3", "whole number"]),
        ({"transformer_layer_cls_to_wrap": 3}, ["transformer_layer_cls_to_wrap=3", "class names"]),
        ({"state_dict_type": "PARTIAL"}, ["state_dict_type='PARTIAL'", "SHARDED_STATE_DICT"]),
        ({"reduce_dtype": "fp8"}, ["reduce_dtype='fp8'", "'fp32'"]),
    ],
)
def test_bad_values_say_what_was_expected(section: dict[str, Any], fragments: list[str]) -> None:
    from plait_fsdp import FSDPOptions

    with pytest.raises(ConfigError) as info:
        FSDPOptions.from_section(section)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_a_foreign_options_object_is_refused() -> None:
    from plait_fsdp import FSDPOptions

    with pytest.raises(ConfigError, match=r"expected a dict or plait_fsdp\.FSDPOptions"):
        FSDPOptions.from_section(["min_num_params"])


def test_launch_options_fill_the_fsdp_section() -> None:
    import plait_fsdp
    from plait_fsdp import FSDPOptions

    sections = plait_fsdp.plait_launch_options()
    assert list(sections) == ["fsdp"]
    options = list(sections["fsdp"])
    assert all(o.default is None for o in options)  # a value only when the flag is given
    seen: dict[str, Any] = {}

    @click.command(params=options)
    def launch(**values: Any) -> None:
        seen.update({k: v for k, v in values.items() if v is not None})

    result = CliRunner().invoke(launch, [
        "--fsdp-auto-wrap-policy", "transformer_based_wrap", "--fsdp-transformer-layer-cls-to-wrap", "Block,Attention",
        "--fsdp-no-reshard-after-forward", "--fsdp-activation-checkpointing", "--fsdp-state-dict-type",
        "FULL_STATE_DICT", "--fsdp-reduce-dtype", "bf16",
    ])
    assert result.exit_code == 0, result.output
    options_object = FSDPOptions.from_section(seen)
    assert options_object.wrap_policy == "TRANSFORMER_BASED_WRAP"
    assert options_object.transformer_layer_cls_to_wrap == ("Block", "Attention")
    assert options_object.reshard_after_forward is False
    assert options_object.activation_checkpointing is True
    assert options_object.state_dict_type == "FULL_STATE_DICT"
    assert options_object.reduce_dtype == "bf16"
    result = CliRunner().invoke(launch, [])
    assert seen and result.exit_code == 0
    names = {o.name for o in options}
    # HF Accelerate's FSDP1-only flags (--fsdp_use_orig_params...) set keys the options accept and ignore.
    from plait_fsdp.options import ACCEPTED_AND_IGNORED

    assert names <= {f.name for f in dataclasses.fields(FSDPOptions)} | set(ACCEPTED_AND_IGNORED)


def test_config_questions_make_a_valid_section() -> None:
    import plait_fsdp
    from plait_fsdp import FSDPOptions

    answers = {
        "FSDP auto-wrap policy": "TRANSFORMER_BASED_WRAP",
        "Layer class names": "LlamaDecoderLayer",
        "Sharding strategy": "SHARD_GRAD_OP",
        "Offload": "no",
        "Checkpoint activations": "yes",
        "Load real weights": "no",
        "Checkpoint format": "SHARDED_STATE_DICT",
    }

    def ask(question: str, default: Any = None, choices: Any = None, type: Any = str) -> Any:
        return next(v for k, v in answers.items() if question.startswith(k))

    assert plait_fsdp.plait_config_questions("ddp", ask) is None
    section = plait_fsdp.plait_config_questions("fsdp", ask)
    assert section == {"auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
                       "reshard_after_forward": False, "activation_checkpointing": True,
                       "state_dict_type": "SHARDED_STATE_DICT"}
    assert FSDPOptions.from_section(section).activation_checkpointing


def test_env_report_line() -> None:
    import plait_fsdp

    lines = dict(plait_fsdp.plait_env_report(config=None))  # type: ignore[arg-type]
    assert "FSDP2 fully_shard available" in lines["plait-fsdp"]


def test_importing_the_plugin_does_not_import_torch() -> None:
    code = textwrap.dedent("""
        import sys, plait_fsdp
        from plait.plugins import hook_names
        hooks = hook_names(plait_fsdp)
        assert "torch" not in sys.modules and "click" not in sys.modules, sorted(sys.modules)
        print(" ".join(hooks))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "plait_wrap_model" in result.stdout and "plait_cli_commands" in result.stdout


def test_the_backend_is_an_entry_point() -> None:
    from plait.plugins import installed_backends

    assert "fsdp" in installed_backends()
