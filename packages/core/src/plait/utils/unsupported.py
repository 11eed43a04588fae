"""Names of HF Accelerate's that plait does not implement: Megatron-LM, FP8 recipes, bitsandbytes quantisation,
tensor, context and sequence parallelism, pipeline parallelism.

They can be imported, so that a script's imports work; constructing one of the classes or calling one of
the functions raises :class:`plait.errors.NotSupportedError`, saying what is closest in plait.
"""

from __future__ import annotations

from typing import Any, NoReturn

from plait.errors import not_supported

_SHARD = "shard the model with backend fsdp (FSDP2) or zero (DeepSpeed ZeRO)"
_BF16 = "plait has no FP8 training; use mixed_precision='bf16'"
_QUANTISE = ("plait does not quantise models; load a quantised model with its library (e.g. transformers' "
             "from_pretrained(..., quantization_config=...)) before prepare")


class _NotSupported:
    """Importable; constructing it raises :class:`~plait.errors.NotSupportedError`."""

    _alternative = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise not_supported(type(self).__name__, self._alternative)


class MegatronLMPlugin(_NotSupported):
    _alternative = "Megatron-LM is not integrated; " + _SHARD


class MegatronLMDummyScheduler(_NotSupported):
    _alternative = "Megatron-LM is not integrated; use a torch scheduler with backend fsdp or zero"


class MegatronLMDummyDataLoader(_NotSupported):
    _alternative = "Megatron-LM is not integrated; use a torch DataLoader with backend fsdp or zero"


class AbstractTrainStep(_NotSupported):
    _alternative = "Megatron-LM is not integrated; write the training step as a plain loop with backend fsdp or zero"


class GPTTrainStep(AbstractTrainStep):
    pass


class BertTrainStep(AbstractTrainStep):
    pass


class T5TrainStep(AbstractTrainStep):
    pass


def avg_losses_across_data_parallel_group(*args: Any, **kwargs: Any) -> NoReturn:
    """Not supported: Megatron-LM."""
    raise not_supported("avg_losses_across_data_parallel_group", "Megatron-LM is not integrated; use "
                        "accelerator.reduce(loss, 'mean')")


class FP8RecipeKwargs(_NotSupported):
    _alternative = _BF16


class AORecipeKwargs(_NotSupported):
    _alternative = _BF16


class TERecipeKwargs(_NotSupported):
    _alternative = _BF16


class MSAMPRecipeKwargs(_NotSupported):
    _alternative = _BF16


class BnbQuantizationConfig(_NotSupported):
    _alternative = _QUANTISE


class TorchTensorParallelPlugin(_NotSupported):
    _alternative = "tensor parallelism is not supported; " + _SHARD


class TorchTensorParallelConfig(_NotSupported):
    _alternative = "tensor parallelism is not supported; " + _SHARD


class TorchContextParallelConfig(_NotSupported):
    _alternative = "context parallelism is not supported; " + _SHARD + ", or shorten the sequences"


class DeepSpeedSequenceParallelConfig(_NotSupported):
    _alternative = "DeepSpeed's sequence parallelism (Ulysses) is not supported; use backend zero without it"


class ParallelismConfig(_NotSupported):
    _alternative = ("choose the kind of parallelism with the backend: ddp (data parallel), fsdp or zero (sharded "
                    "data parallel); tensor, context and sequence parallelism are not supported")


def convert_model(*args: Any, **kwargs: Any) -> NoReturn:
    """Not supported: Transformer Engine layers (FP8)."""
    raise not_supported("convert_model", _BF16 + " (Transformer Engine layers are not used)")


def has_transformer_engine_layers(*args: Any, **kwargs: Any) -> NoReturn:
    """Not supported: Transformer Engine layers (FP8)."""
    raise not_supported("has_transformer_engine_layers", _BF16 + " (Transformer Engine layers are not used)")


def contextual_fp8_autocast(*args: Any, **kwargs: Any) -> NoReturn:
    """Not supported: FP8 autocast."""
    raise not_supported("contextual_fp8_autocast", _BF16 + " (accelerator.autocast() covers it)")


def apply_fp8_autowrap(*args: Any, **kwargs: Any) -> NoReturn:
    """Not supported: FP8 autocast."""
    raise not_supported("apply_fp8_autowrap", _BF16)


def load_and_quantize_model(*args: Any, **kwargs: Any) -> NoReturn:
    """Not supported: bitsandbytes quantisation."""
    raise not_supported("load_and_quantize_model", _QUANTISE)


def prepare_pippy(*args: Any, **kwargs: Any) -> NoReturn:
    """Not supported: pipeline-parallel inference."""
    raise not_supported("prepare_pippy", "pipeline parallelism is not supported; " + _SHARD)
