"""HF Accelerate's ``is_*_available`` checks (``accelerate.utils.imports``), with its signatures.

Library checks look for the module and its installed distribution (a folder of the same name
on ``sys.path`` is not the library) without importing it; device checks ask torch, imported
when they are called. Hardware plait does not run on (NPU, XPU, MLU, HPU, MUSA, SDAA) and FP8
are reported unavailable, so that scripts take their portable path.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import sys

_TRUE = ("1", "true", "yes", "y", "on", "t")


def _is_package_available(module: str, distribution: str | None = None) -> bool:
    """Whether ``module`` can be imported and comes from an installed distribution."""
    try:
        if importlib.util.find_spec(module) is None:
            return False
    except (ImportError, ValueError):  # a parent package is missing, or __spec__ is None
        return False
    try:
        importlib.metadata.metadata(distribution or module)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _version(text: str) -> tuple[int, ...]:
    """The release numbers of a version string: ``"2.4.1+cu121"`` -> ``(2, 4, 1)``."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", str(text))
    if match is None:
        raise ValueError(f"version {text!r} is not valid: expected numbers separated by dots, like '1.25.0'")
    return tuple(int(part) for part in match.group(1).split("."))


def _at_least(installed: str, minimum: str) -> bool:
    have, need = _version(installed), _version(minimum)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def _distribution_at_least(distribution: str, minimum: str) -> bool:
    try:
        return _at_least(importlib.metadata.version(distribution), minimum)
    except importlib.metadata.PackageNotFoundError:
        return False


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


# --------------------------------------------------------------------------- devices
def is_cuda_available() -> bool:
    """Whether CUDA devices can be used, checked through NVML so that CUDA is not initialised (a forked
    worker can still use it)."""
    import torch

    previous = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    try:
        return bool(torch.cuda.is_available())
    finally:
        if previous is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = previous


def is_mps_available(min_version: str = "1.12") -> bool:
    """Whether Apple's MPS device is built into torch and usable (torch at least ``min_version``)."""
    import torch

    return (
        _at_least(torch.__version__, min_version)
        and bool(torch.backends.mps.is_available())
        and bool(torch.backends.mps.is_built())
    )


def is_torch_xla_available(check_is_tpu: bool = False, check_is_gpu: bool = False) -> bool:
    """Whether torch_xla is installed (and ``USE_TORCH_XLA`` does not turn it off); with ``check_is_tpu`` or
    ``check_is_gpu``, whether its device is a TPU or a GPU."""
    if check_is_tpu and check_is_gpu:
        raise ValueError("is_torch_xla_available(check_is_tpu=True, check_is_gpu=True): pass at most one of them")
    if os.environ.get("USE_TORCH_XLA", "true").strip().lower() not in _TRUE:
        return False
    if not _is_package_available("torch_xla"):
        return False
    if check_is_tpu or check_is_gpu:
        import torch_xla.runtime

        kind = str(torch_xla.runtime.device_type())
        return kind == "TPU" if check_is_tpu else kind in ("GPU", "CUDA")
    return True


def is_bf16_available(ignore_tpu: bool = False) -> bool:
    """Whether bfloat16 works here: on a TPU unless ``ignore_tpu``, on a CUDA device that supports it, on
    MPS with macOS 14 or later; on CPU always."""
    import torch

    if is_torch_xla_available(check_is_tpu=True):
        return not ignore_tpu
    if is_cuda_available():
        return bool(torch.cuda.is_bf16_supported())
    if is_mps_available():
        newer = getattr(torch.backends.mps, "is_macos_or_newer", None)
        return bool(newer(14, 0)) if newer is not None else False
    return True


def is_fp16_available() -> bool:
    """Whether float16 mixed precision works here (it does wherever plait runs)."""
    return True


def is_fp8_available() -> bool:
    """Always ``False``: plait has no FP8 training (use ``mixed_precision="bf16"``)."""
    return False


def is_npu_available(check_device: bool = False) -> bool:
    """Always ``False``: plait does not run on Ascend NPUs."""
    return False


def is_xpu_available(check_device: bool = False) -> bool:
    """Always ``False``: plait does not run on Intel XPUs."""
    return False


def is_mlu_available(check_device: bool = False) -> bool:
    """Always ``False``: plait does not run on Cambricon MLUs."""
    return False


def is_hpu_available(init_hccl: bool = False) -> bool:
    """Always ``False``: plait does not run on Habana HPUs."""
    return False


def is_musa_available(check_device: bool = False) -> bool:
    """Always ``False``: plait does not run on Moore Threads MUSA devices."""
    return False


def is_sdaa_available(check_device: bool = False) -> bool:
    """Always ``False``: plait does not run on SDAA devices."""
    return False


def is_weights_only_available() -> bool:
    """Whether ``torch.load(weights_only=True)`` takes an allowlist of globals (torch 2.4 or later)."""
    import torch

    return _at_least(torch.__version__, "2.4.0")


# --------------------------------------------------------------------------- libraries
def is_numpy_available(min_version: str = "1.25.0") -> bool:
    return _distribution_at_least("numpy", min_version) if _is_package_available("numpy") else False


def is_safetensors_available() -> bool:
    return _is_package_available("safetensors")


def is_tqdm_available() -> bool:
    return _is_package_available("tqdm")


def is_rich_available() -> bool:
    """Whether rich is installed and turned on with ``ACCELERATE_ENABLE_RICH`` (or ``PLAIT_ENABLE_RICH``)."""
    return _is_package_available("rich") and (_flag("ACCELERATE_ENABLE_RICH") or _flag("PLAIT_ENABLE_RICH"))


def is_pytest_available() -> bool:
    return _is_package_available("pytest")


def is_pandas_available() -> bool:
    return _is_package_available("pandas")


def is_datasets_available() -> bool:
    return _is_package_available("datasets")


def is_transformers_available() -> bool:
    return _is_package_available("transformers")


def is_peft_available() -> bool:
    return _is_package_available("peft")


def is_timm_available() -> bool:
    return _is_package_available("timm")


def is_torchvision_available() -> bool:
    return _is_package_available("torchvision")


def is_schedulefree_available() -> bool:
    return _is_package_available("schedulefree")


def is_deepspeed_available() -> bool:
    return _is_package_available("deepspeed")


def is_ipex_available() -> bool:
    """Whether intel_extension_for_pytorch is installed (plait does not use it)."""
    return _is_package_available("intel_extension_for_pytorch")


def is_megatron_lm_available() -> bool:
    """Whether Megatron-LM (megatron-core) is installed (plait does not use it)."""
    return _is_package_available("megatron", "megatron-core")


def is_msamp_available() -> bool:
    return _is_package_available("msamp", "ms-amp")


def is_transformer_engine_available() -> bool:
    return _is_package_available("transformer_engine", "transformer-engine")


def is_torchao_available() -> bool:
    return _is_package_available("torchao") and _distribution_at_least("torchao", "0.6.1")


def is_bnb_available(min_version: str | None = None) -> bool:
    if not _is_package_available("bitsandbytes"):
        return False
    return min_version is None or _distribution_at_least("bitsandbytes", min_version)


# --------------------------------------------------------------------------- trackers
def is_tensorboard_available() -> bool:
    return _is_package_available("tensorboard") or _is_package_available("tensorboardX")


def is_wandb_available() -> bool:
    return _is_package_available("wandb")


def is_comet_ml_available() -> bool:
    return _is_package_available("comet_ml")


def is_mlflow_available() -> bool:
    return _is_package_available("mlflow") or _is_package_available("mlflow", "mlflow-skinny")


def is_aim_available() -> bool:
    """Whether aim before 4.0 is installed."""
    if not _is_package_available("aim"):
        return False
    return not _distribution_at_least("aim", "4.0.0")


def is_clearml_available() -> bool:
    return _is_package_available("clearml")


def is_dvclive_available() -> bool:
    return _is_package_available("dvclive")


def is_swanlab_available() -> bool:
    return _is_package_available("swanlab")


def is_trackio_available() -> bool:
    return sys.version_info >= (3, 10) and _is_package_available("trackio")
