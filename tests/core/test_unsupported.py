"""Accelerate's names plait does not implement: importable from plait.utils, refusing when used, with what is
closest; every name of plait.utils' table resolves."""

from __future__ import annotations

import pytest

import plait.utils
from plait.errors import NotSupportedError
from plait.utils import _MODULES as TABLE

CLOSEST = {
    "MegatronLMPlugin": "fsdp", "FP8RecipeKwargs": "bf16", "AORecipeKwargs": "bf16", "TERecipeKwargs": "bf16",
    "MSAMPRecipeKwargs": "bf16", "BnbQuantizationConfig": "quantization_config", "TorchTensorParallelPlugin": "fsdp",
    "TorchTensorParallelConfig": "fsdp", "TorchContextParallelConfig": "fsdp", "DeepSpeedSequenceParallelConfig": "zero",
    "ParallelismConfig": "ddp", "convert_model": "bf16", "has_transformer_engine_layers": "bf16",
    "contextual_fp8_autocast": "bf16", "apply_fp8_autowrap": "bf16", "load_and_quantize_model": "quantization_config",
    "prepare_pippy": "fsdp", "MegatronLMDummyScheduler": "fsdp", "MegatronLMDummyDataLoader": "fsdp",
    "AbstractTrainStep": "fsdp", "GPTTrainStep": "fsdp", "BertTrainStep": "fsdp", "T5TrainStep": "fsdp",
    "avg_losses_across_data_parallel_group": "reduce",
}


def test_the_table_lists_exactly_these_names():
    assert set(TABLE["plait.utils.unsupported"]) == set(CLOSEST)


@pytest.mark.parametrize("name", sorted(CLOSEST))
def test_using_it_raises_not_supported_naming_it_and_what_is_closest(name: str):
    value = getattr(plait.utils, name)
    assert value.__module__ == "plait.utils.unsupported"
    with pytest.raises(NotSupportedError, match=rf"^{name} is not supported by plait: .*{CLOSEST[name]}") as info:
        value(fp8_format="HYBRID") if isinstance(value, type) else value(object())
    assert isinstance(info.value, NotImplementedError)  # what scripts probing for support catch


def test_classes_can_still_be_used_in_isinstance_checks_and_annotations():
    from plait.utils import FP8RecipeKwargs, MegatronLMPlugin

    assert not isinstance(object(), (FP8RecipeKwargs, MegatronLMPlugin))


def test_every_name_of_plait_utils_resolves_where_the_table_says():
    done = {"plait.utils.memory", "plait.utils.tqdm", "plait.utils.imports", "plait.utils.other",
            "plait.utils.constants", "plait.big_modeling", "plait.utils.unsupported"}
    for module, names in TABLE.items():
        if module in done:
            for name in names:
                assert getattr(plait.utils, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        plait.utils.no_such_name  # noqa: B018


def test_constants_are_accelerate_s():
    from plait.utils import constants as c

    assert (c.MODEL_NAME, c.SAFE_MODEL_NAME, c.WEIGHTS_NAME, c.SAFE_WEIGHTS_NAME) == (
        "pytorch_model", "model", "pytorch_model.bin", "model.safetensors")
    assert (c.WEIGHTS_INDEX_NAME, c.SAFE_WEIGHTS_INDEX_NAME) == ("pytorch_model.bin.index.json",
                                                                 "model.safetensors.index.json")
    assert (c.OPTIMIZER_NAME, c.SCHEDULER_NAME, c.SAMPLER_NAME, c.SCALER_NAME, c.RNG_STATE_NAME) == (
        "optimizer", "scheduler", "sampler", "scaler.pt", "random_states")
    from plait.checkpoint import exports

    assert (exports.SAFE_WEIGHTS_NAME, exports.WEIGHTS_NAME) == (c.SAFE_WEIGHTS_NAME, c.WEIGHTS_NAME)


def test_constants_equal_accelerate_s_own_where_it_is_installed():
    accelerate_constants = pytest.importorskip("accelerate.utils.constants")
    from plait.utils import constants

    names = [n for n in TABLE["plait.utils.constants"]]
    assert {n: getattr(constants, n) for n in names} == {n: getattr(accelerate_constants, n) for n in names}
