"""The ``zero:`` options, the DeepSpeed config built from them, and the plugin's command-line hooks.

In one process, without starting DeepSpeed: every bad input is refused with a
message naming the value, what was expected and what to do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))
from zero_helpers import clean_environment  # noqa: F401

import plait_zero
from plait.config import resolve_config
from plait.errors import ConfigError
from plait_zero.deepspeed_config import build_config
from plait_zero.options import ZeroOptions

FACTS = {"micro_batch_size": 4, "gradient_accumulation_steps": 2, "world_size": 2, "mixed_precision": "no",
         "has_optimizer": True, "has_scheduler": False}


def error(options: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        ZeroOptions.from_section(options)
    return str(info.value)


def write_json(tmp_path: Path, data: Any, name: str = "ds.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


# --------------------------------------------------------------------------- options
def test_defaults_run_stage_2_without_offload_or_clipping() -> None:
    options = ZeroOptions()
    config = build_config(options, **FACTS)
    assert options.effective_stage == 2
    assert config["zero_optimization"] == {"stage": 2}
    assert config["gradient_clipping"] == 0.0  # DeepSpeed alone would clip at 1.0
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"]) == (4, 2, 16)
    assert config["fp16"] == {"enabled": False} and config["bf16"] == {"enabled": False}
    assert config["zero_allow_untested_optimizer"] is True


@pytest.mark.parametrize("stage", [0, 4, "x", True, 2.5])
def test_stage_outside_1_to_3_is_named(stage: Any) -> None:
    message = error({"stage": stage})
    assert f"stage={stage!r}" in message and "expected 1, 2 or 3" in message


def test_offload_device_not_in_the_list_is_named() -> None:
    message = error({"offload_optimizer_device": "gpu"})
    assert "offload_optimizer_device='gpu'" in message and "'none', 'cpu', 'nvme'" in message
    assert "did you mean 'cpu'" in error({"offload_param_device": "cpuu", "stage": 3})


@pytest.mark.parametrize("kind", ["optimizer", "param"])
def test_nvme_offload_without_a_path_is_named(kind: str) -> None:
    message = error({f"offload_{kind}_device": "nvme", "stage": 3, f"offload_{kind}_nvme_path": "none"})
    assert f"offload_{kind}_device='nvme' needs offload_{kind}_nvme_path" in message
    options = ZeroOptions.from_section({f"offload_{kind}_device": "nvme", "stage": 3,
                                        f"offload_{kind}_nvme_path": "/local_nvme"})
    block = build_config(options, **FACTS)["zero_optimization"][f"offload_{kind}"]
    assert block == {"device": "nvme", "nvme_path": "/local_nvme", "pin_memory": False}


def test_cpu_offload_builds_deepspeed_blocks() -> None:
    options = ZeroOptions(stage=3, offload_optimizer_device="cpu", offload_param_device="CPU")
    config = build_config(options, **FACTS)
    assert config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert config["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert config["zero_force_ds_cpu_optimizer"] is False  # a torch optimizer may run offloaded


def test_options_that_need_stage_3_say_so() -> None:
    assert "needs ZeRO stage 3" in error({"offload_param_device": "cpu", "stage": 2})
    assert "zero3_init=true needs ZeRO stage 3" in error({"zero3_init": True, "stage": 1})


@pytest.mark.parametrize("value", [-1, "much", True])
def test_bad_gradient_clipping_is_named(value: Any) -> None:
    assert f"gradient_clipping={value!r}" in error({"gradient_clipping": value})


def test_unknown_option_suggests_the_closest() -> None:
    message = error({"stag": 2})
    assert "unknown zero option 'stag'" in message and "did you mean 'stage'" in message


def test_options_object_and_bad_types() -> None:
    options = ZeroOptions(stage=3)
    assert ZeroOptions.from_section(options) is options
    with pytest.raises(ConfigError, match=r"expected a dict or plait_zero\.ZeroOptions"):
        ZeroOptions.from_section(["stage", 2])
    assert "zero3_init='yes'" in error({"zero3_init": "yes"})


def test_hf_accelerate_deepspeed_config_keys_are_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds_json = write_json(tmp_path, {"zero_optimization": {"stage": "auto"}})
    path = tmp_path / "default_config.yaml"
    path.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nmixed_precision: 'no'\nnum_processes: 2\n"
        "deepspeed_config:\n  deepspeed_multinode_launcher: standard\n  gradient_accumulation_steps: 2\n"
        "  gradient_clipping: 1.0\n  offload_optimizer_device: nvme\n  offload_optimizer_nvme_path: /nvme\n"
        "  offload_param_device: cpu\n  offload_param_nvme_path: none\n  zero3_init_flag: true\n"
        "  zero3_save_16bit_model: true\n  zero_stage: 3\n"
        f"  deepspeed_config_file: {ds_json}\n"
    )
    monkeypatch.setenv("PLAIT_CONFIG_FILE", str(path))
    config = resolve_config({})
    options = ZeroOptions.from_section(config.section("zero"))
    assert (config.backend, config.gradient_accumulation_steps) == ("zero", 2)
    assert (options.stage, options.offload_optimizer_device, options.offload_optimizer_nvme_path) == (3, "nvme", "/nvme")
    assert (options.offload_param_device, options.offload_param_nvme_path) == ("cpu", None)
    assert (options.gradient_clipping, options.zero3_init, options.save_16bit_model) == (1.0, True, True)
    assert options.config_file == ds_json
    zero = build_config(options, **FACTS)["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"] is True


# --------------------------------------------------------------------------- the DeepSpeed JSON
def test_json_that_does_not_parse_is_named(tmp_path: Path) -> None:
    path = write_json(tmp_path, '{"zero_optimization": {"stage": 2,}}')
    message = error({"config_file": path})
    assert path in message and "not valid JSON" in message
    assert "expected an object" in error({"config_file": write_json(tmp_path, "[1, 2]", "list.json")})
    assert "no such file" in error({"config_file": str(tmp_path / "missing.json")})
    bad_stage = write_json(tmp_path, {"zero_optimization": {"stage": 5}}, "stage.json")
    assert "zero_optimization.stage=5" in error({"config_file": bad_stage})


def test_json_auto_values_are_filled(tmp_path: Path) -> None:
    path = write_json(tmp_path, {
        "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": {"stage": "auto", "reduce_bucket_size": "auto", "overlap_comm": "auto"},
    })
    config = build_config(ZeroOptions(config_file=path, stage=1), **{**FACTS, "mixed_precision": "bf16"})
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"],
            config["gradient_accumulation_steps"]) == (16, 4, 2)
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    assert config["gradient_clipping"] == 0.0
    assert config["zero_optimization"] == {"stage": 1}  # tuning "auto"s left to DeepSpeed's defaults


def test_json_accumulation_stands_over_the_accelerator_default(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"gradient_accumulation_steps": 4})
    config = build_config(ZeroOptions(config_file=path), **{**FACTS, "gradient_accumulation_steps": 1})
    assert (config["gradient_accumulation_steps"], config["train_batch_size"]) == (4, 32)


def test_json_values_stand_where_plait_has_none(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"gradient_clipping": 0.5, "zero_optimization": {"stage": 3}, "wall_clock_breakdown": False})
    options = ZeroOptions(config_file=path)
    assert options.effective_stage == 3
    config = build_config(options, **{**FACTS, "micro_batch_size": None})
    assert config["gradient_clipping"] == 0.5 and config["zero_optimization"]["stage"] == 3
    assert config["train_micro_batch_size_per_gpu"] == 1 and config["wall_clock_breakdown"] is False


@pytest.mark.parametrize(
    "json_part,facts,options,expected",
    [
        ({"gradient_accumulation_steps": 4}, {}, {}, "gradient_accumulation_steps=4 but Accelerator(gradient_accumulation_steps=...) is 2"),
        ({"train_micro_batch_size_per_gpu": 8}, {}, {}, "train_micro_batch_size_per_gpu=8 but the prepared dataloader's batch size per process is 4"),
        ({"train_batch_size": 64}, {}, {}, "train_batch_size=64 but the batch size per process x gradient_accumulation_steps x processes (4 x 2 x 2) is 16"),
        ({"fp16": {"enabled": True}}, {}, {}, "fp16.enabled=True but fp16 per the Accelerator's mixed_precision='no'"),
        ({"bf16": {"enabled": False}}, {"mixed_precision": "bf16"}, {}, "bf16.enabled=False but bf16 per the Accelerator's mixed_precision='bf16'"),
        ({"gradient_clipping": 1.0}, {}, {"gradient_clipping": 0.5}, "gradient_clipping=1.0 but zero option gradient_clipping is 0.5"),
        ({"zero_optimization": {"stage": 1}}, {}, {"stage": 3}, "zero_optimization.stage=1 but zero option stage is 3"),
    ],
)
def test_json_contradicting_the_accelerator_names_both(tmp_path: Path, json_part: dict[str, Any], facts: dict[str, Any],
                                                      options: dict[str, Any], expected: str) -> None:
    path = write_json(tmp_path, json_part)
    with pytest.raises(ConfigError) as info:
        build_config(ZeroOptions(config_file=path, **options), **{**FACTS, **facts})
    assert expected in str(info.value)
    assert path in str(info.value) and '"auto"' in str(info.value)


def test_json_blocks_plait_cannot_honour_are_named(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}})
    with pytest.raises(ConfigError, match=r'has an "optimizer" block'):
        build_config(ZeroOptions(config_file=path), **FACTS)
    path = write_json(tmp_path, {"scheduler": {"type": "WarmupLR"}}, "sched.json")
    with pytest.raises(ConfigError, match=r'has a "scheduler" block'):
        build_config(ZeroOptions(config_file=path), **{**FACTS, "has_scheduler": True})
    path = write_json(tmp_path, {"activation_checkpointing": {"number_checkpoints": "auto"}}, "auto.json")
    with pytest.raises(ConfigError, match=r"activation_checkpointing\.number_checkpoints"):
        build_config(ZeroOptions(config_file=path), **FACTS)
    path = write_json(tmp_path, {"zero_optimization": {"stage": 3, "offload_param": {"device": "nvme"}}}, "nvme.json")
    with pytest.raises(ConfigError, match=r"offload_param\.nvme_path"):
        build_config(ZeroOptions(config_file=path), **FACTS)


def test_a_dict_config_is_accepted() -> None:
    options = ZeroOptions(config_file={"zero_optimization": {"stage": 1}})
    assert options.effective_stage == 1
    assert build_config(options, **FACTS)["zero_optimization"]["stage"] == 1


def test_accelerator_refuses_bad_options_at_construction() -> None:
    from plait import Accelerator

    with pytest.raises(ConfigError, match="stage=7"):
        Accelerator(backend="zero", backend_options={"stage": 7})
    accelerator = Accelerator(backend="zero", backend_options={"stage": 3, "offload_optimizer_device": "cpu"})
    assert isinstance(accelerator.backend_options, ZeroOptions)
    assert accelerator.backend_options.offload_optimizer_device == "cpu"
    assert str(accelerator.distributed_type) == "DEEPSPEED"
    # As HF Accelerate builds one from `accelerate launch --use_deepspeed`: the state shows the DeepSpeed config.
    plugin = accelerator.state.deepspeed_plugin
    assert plugin is accelerator.deepspeed_plugin and plugin.zero_stage == 3
    assert plugin.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert accelerator.scaler is None
    with pytest.raises(RuntimeError, match=r"pass the model and its optimizer to accelerator\.prepare"):
        import torch

        accelerator.backward(torch.ones((), requires_grad=True))


def test_launch_hands_the_section_to_workers_in_plait_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from plait import Accelerator

    # What `plait launch --zero-stage 3 --zero-offload-optimizer-device cpu` sets for each worker.
    monkeypatch.setenv("PLAIT_ZERO", json.dumps({"stage": 3, "offload_optimizer_device": "cpu"}))
    options = Accelerator(backend="zero").backend_options
    assert (options.stage, options.offload_optimizer_device) == (3, "cpu")
    # Accelerator arguments merge over it.
    options = Accelerator(backend="zero", backend_options={"gradient_clipping": 1.0}).backend_options
    assert (options.stage, options.gradient_clipping) == (3, 1.0)


# --------------------------------------------------------------------------- command line
def test_launch_flags_fill_the_zero_section() -> None:
    import click
    from click.testing import CliRunner

    options = plait_zero.plait_launch_options()["zero"]
    seen: dict[str, Any] = {}
    command = click.Command("launch", params=list(options), callback=lambda **kw: seen.update(kw))
    result = CliRunner().invoke(command, [
        "--zero-stage", "3", "--zero-offload-optimizer-device", "nvme", "--zero-offload-optimizer-nvme-path", "/nvme",
        "--zero-offload-param-device", "cpu", "--zero-gradient-clipping", "1.5", "--zero3-init",
        "--no-zero3-save-16bit-model", "--zero-config-file", "ds.json",
    ])
    assert result.exit_code == 0, result.output
    assert seen == {"stage": 3, "offload_optimizer_device": "nvme", "offload_optimizer_nvme_path": "/nvme",
                    "offload_param_device": "cpu", "offload_param_nvme_path": None, "gradient_clipping": 1.5,
                    "zero3_init": True, "save_16bit_model": False, "config_file": "ds.json"}
    # Every flag's parameter is an option of the section; unset flags stay None (the config file's value is kept).
    result = CliRunner().invoke(command, [])
    assert set(seen) <= {f.name for f in ZeroOptions.__dataclass_fields__.values() if f.init}
    assert all(value is None for value in seen.values())
    bad = CliRunner().invoke(command, ["--zero-stage", "4"])
    assert bad.exit_code != 0 and "--zero-stage" in bad.output


def test_config_questions_give_a_valid_section() -> None:
    answers = {"DeepSpeed JSON": "", "ZeRO stage": "3", "Offload optimizer": "cpu", "Offload parameters": "none",
               "Build models": "no", "Gather 16-bit": "yes", "Clip": "1.0"}

    def ask(question: str, default: Any = None, choices: Any = None, type: Any = str) -> Any:
        return type(next(v for k, v in answers.items() if question.startswith(k)))

    section = plait_zero.plait_config_questions(backend="zero", ask=ask)
    assert section == {"stage": 3, "offload_optimizer_device": "cpu", "offload_param_device": "none",
                       "zero3_init": False, "save_16bit_model": True, "gradient_clipping": 1.0}
    assert plait_zero.plait_config_questions(backend="ddp", ask=ask) is None


def test_env_report_names_deepspeed_version() -> None:
    from importlib import metadata

    assert plait_zero.plait_env_report() == [("deepspeed", metadata.version("deepspeed"))]


def test_plugin_module_imports_neither_torch_nor_deepspeed() -> None:
    code = "import sys, plait_zero; print('torch' in sys.modules, 'deepspeed' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
