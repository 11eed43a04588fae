"""HF Accelerate's ``accelerate.utils``: the names its users import from it, under the same names.

Every name is imported on first use (:mod:`plait.lazy_names`), so ``from plait.utils import
set_seed`` loads only what ``set_seed`` needs. Names of Accelerate's that plait does not
implement (Megatron-LM, FP8 recipes, IPEX, NPU/XPU/MLU/HPU) can be imported; using them
raises :class:`plait.errors.NotSupportedError` saying so and what is closest.
"""

from __future__ import annotations

from typing import Any

from plait.lazy_names import lazy_names

#: module -> the names it defines (the table is read once, on the first lookup).
_MODULES: dict[str, tuple[str, ...]] = {
    "plait.utils.dataclasses": (
        "AutocastKwargs", "ComputeEnvironment", "DataLoaderConfiguration", "DDPCommunicationHookType",
        "DeepSpeedPlugin", "DistributedDataParallelKwargs", "DynamoBackend", "FullyShardedDataParallelPlugin",
        "GradientAccumulationPlugin", "GradScalerKwargs", "InitProcessGroupKwargs", "KwargsHandler", "LoggerType",
        "PrecisionType", "ProfileKwargs", "RNGType", "SageMakerDistributedType", "TorchDynamoPlugin",
        "DistributedType", "ProjectConfiguration", "DummyOptim", "DummyScheduler", "get_active_deepspeed_plugin",
    ),
    "plait.utils.operations": (
        "broadcast", "broadcast_object_list", "concatenate", "convert_outputs_to_fp32", "convert_to_fp32",
        "find_batch_size", "find_device", "gather", "gather_object", "honor_type", "initialize_tensors",
        "is_namedtuple", "is_tensor_information", "is_torch_tensor", "listify", "pad_across_processes",
        "recursively_apply", "reduce", "send_to_device", "slice_tensors", "synchronize_rng_states",
        "synchronize_rng_state", "wait_for_everyone", "set_seed", "TensorInformation",
    ),
    "plait.utils.memory": (
        "clear_device_cache", "find_executable_batch_size", "release_memory", "should_reduce_batch_size",
    ),
    "plait.utils.tqdm": ("tqdm",),
    "plait.utils.imports": (
        "is_bf16_available", "is_comet_ml_available", "is_cuda_available", "is_datasets_available",
        "is_deepspeed_available", "is_fp16_available", "is_fp8_available", "is_mps_available",
        "is_numpy_available", "is_pandas_available", "is_peft_available", "is_rich_available",
        "is_safetensors_available", "is_tensorboard_available", "is_timm_available", "is_torch_xla_available",
        "is_torchvision_available", "is_transformers_available", "is_tqdm_available", "is_wandb_available",
        "is_pytest_available", "is_schedulefree_available", "is_npu_available", "is_xpu_available",
        "is_mlu_available", "is_hpu_available", "is_musa_available", "is_sdaa_available", "is_ipex_available",
        "is_megatron_lm_available", "is_msamp_available", "is_transformer_engine_available",
        "is_torchao_available", "is_bnb_available", "is_mlflow_available", "is_aim_available",
        "is_clearml_available", "is_dvclive_available", "is_swanlab_available", "is_trackio_available",
        "is_weights_only_available",
    ),
    "plait.utils.other": (
        "extract_model_from_parallel", "get_pretty_name", "is_compiled_module", "is_port_in_use", "load",
        "merge_dicts", "merge_fsdp_weights", "save", "write_basic_config", "patch_environment",
        "clear_environment", "str_to_bool", "get_int_from_env", "parse_flag_from_env", "parse_choice_from_env",
        "convert_bytes",
    ),
    "plait.utils.constants": (
        "MODEL_NAME", "OPTIMIZER_NAME", "RNG_STATE_NAME", "SAFE_MODEL_NAME", "SAFE_WEIGHTS_INDEX_NAME",
        "SAFE_WEIGHTS_NAME", "SAMPLER_NAME", "SCALER_NAME", "SCHEDULER_NAME", "WEIGHTS_INDEX_NAME",
        "WEIGHTS_NAME", "PROFILE_PATTERN_NAME", "WEIGHTS_PATTERN_NAME", "SAFE_WEIGHTS_PATTERN_NAME",
    ),
    "plait.big_modeling": (
        "init_empty_weights", "init_on_device", "cpu_offload", "cpu_offload_with_hook", "disk_offload",
        "dispatch_model", "load_checkpoint_and_dispatch", "infer_auto_device_map", "load_checkpoint_in_model",
        "get_balanced_memory", "get_max_memory",
    ),
    "plait.utils.unsupported": (
        "MegatronLMPlugin", "MegatronLMDummyScheduler", "MegatronLMDummyDataLoader", "AbstractTrainStep",
        "GPTTrainStep", "BertTrainStep", "T5TrainStep", "avg_losses_across_data_parallel_group", "FP8RecipeKwargs", "AORecipeKwargs", "TERecipeKwargs", "MSAMPRecipeKwargs",
        "BnbQuantizationConfig", "TorchTensorParallelPlugin", "TorchTensorParallelConfig",
        "TorchContextParallelConfig", "DeepSpeedSequenceParallelConfig", "convert_model",
        "has_transformer_engine_layers", "contextual_fp8_autocast", "apply_fp8_autowrap",
        "load_and_quantize_model", "prepare_pippy", "ParallelismConfig",
    ),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_names(globals(), _LAZY)


def _names() -> dict[str, Any]:  # pragma: no cover - for tests: every name resolved
    return {name: __getattr__(name) for name in __all__}
