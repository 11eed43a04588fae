"""Mapping HF Accelerate's ``default_config.yaml`` onto plait's keys and backend sections."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from plait.errors import ConfigError
from plait.plugins.catalog import accelerate_types, backend_for_accelerate

_TOP_LEVEL = {
    "mixed_precision": "mixed_precision",
    "num_processes": "num_processes",
    "num_machines": "num_machines",
    "machine_rank": "machine_rank",
    "main_process_ip": "main_process_ip",
    "main_process_port": "main_process_port",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "use_cpu": "cpu",
    "debug": "debug",
}
# Keys of Accelerate's file that say nothing plait needs (launcher or hardware details it infers itself).
_IGNORED = {
    "compute_environment",
    "downcast_bf16",
    "enable_cpu_affinity",
    "gpu_ids",
    "main_training_function",
    "rdzv_backend",
    "same_network",
    "tpu_env",
    "tpu_use_cluster",
    "tpu_use_sudo",
    "dynamo_config",
    "megatron_lm_config",
    "ipex_config",
    "mpirun_config",
    "parallelism_config",
    "fp8_config",
    "tpu_name",
    "tpu_zone",
    "commands",
    "command_file",
    "use_mps_device",
}
# Keys of Accelerate's ``deepspeed_config`` that configure its multi-node launcher, not the engine.
_DEEPSPEED_LAUNCHER_KEYS = {
    "deepspeed_multinode_launcher",
    "deepspeed_hostfile",
    "deepspeed_exclusion_filter",
    "deepspeed_inclusion_filter",
}
_DEEPSPEED_KEYS = {
    "zero_stage": "stage",
    "offload_optimizer_device": "offload_optimizer_device",
    "offload_param_device": "offload_param_device",
    "offload_optimizer_nvme_path": "offload_optimizer_nvme_path",
    "offload_param_nvme_path": "offload_param_nvme_path",
    "gradient_clipping": "gradient_clipping",
    "zero3_init_flag": "zero3_init",
    "zero3_save_16bit_model": "save_16bit_model",
    "deepspeed_config_file": "config_file",
}


def is_accelerate_config(data: dict[str, Any]) -> bool:
    """Whether a parsed YAML mapping is in HF Accelerate's format."""
    return "distributed_type" in data or "compute_environment" in data


def source_key(key: str) -> str:
    """The Accelerate key that plait's top-level ``key`` comes from (to name its line in errors)."""
    if key == "backend":
        return "distributed_type"
    return next((k for k, v in _TOP_LEVEL.items() if v == key), key)


def from_accelerate(data: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """Translate an Accelerate config mapping into plait's keys and sections."""
    out: dict[str, Any] = {}
    raw_type = data.get("distributed_type", "NO")
    # YAML 1.1 reads an unquoted `distributed_type: NO` as false.
    dtype = "NO" if raw_type is False else str(raw_type)
    backend = backend_for_accelerate(dtype)
    if backend is None:
        raise ConfigError(
            f"config file {path}: distributed_type {dtype!r} has no plait backend; "
            f"supported: {', '.join(accelerate_types())}"
        )
    out["backend"] = backend
    skipped = []
    for key, value in data.items():
        if key == "distributed_type" or key in _IGNORED:
            continue
        if key in _TOP_LEVEL:
            if value is not None:
                out[_TOP_LEVEL[key]] = value
        elif key == "fsdp_config":
            out["fsdp"] = fsdp_section(value or {})
        elif key == "deepspeed_config":
            section = dict(value or {})
            if "gradient_accumulation_steps" in section:
                out["gradient_accumulation_steps"] = section.pop("gradient_accumulation_steps")
            out["zero"] = {
                _DEEPSPEED_KEYS.get(k, k): v for k, v in section.items() if k not in _DEEPSPEED_LAUNCHER_KEYS
            }
        else:
            skipped.append(key)
    if skipped:
        warnings.warn(f"config file {path}: ignoring HF Accelerate keys plait does not use: {', '.join(skipped)}", stacklevel=3)
    if out.get("backend") != "fsdp":
        out.pop("fsdp", None)
    if out.get("backend") != "zero":
        out.pop("zero", None)
    return out


def fsdp_section(section: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = key[len("fsdp_") :] if key.startswith("fsdp_") else key
        # Accelerate >= 1.6 writes FSDP1's strategy name under `fsdp_reshard_after_forward` too (a bool for FSDP2).
        if name == "sharding_strategy" or (name == "reshard_after_forward" and not isinstance(value, bool)):
            # FULL_SHARD reshards parameters after forward; SHARD_GRAD_OP keeps them gathered.
            # HYBRID_SHARD_ZERO2 (5) keeps them gathered too, within each node.
            out["reshard_after_forward"] = str(value).upper() not in ("SHARD_GRAD_OP", "2", "HYBRID_SHARD_ZERO2", "5")
            continue
        out[name] = value
    return out


def accelerate_default_path(environ: dict[str, str] | None = None) -> Path:
    """Where HF Accelerate keeps ``default_config.yaml``: ``$HF_HOME/accelerate`` (``HF_HOME`` defaults to
    ``$XDG_CACHE_HOME/huggingface``, and that to ``~/.cache/huggingface``)."""
    import os

    environ = dict(os.environ) if environ is None else environ
    cache = environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = environ.get("HF_HOME") or os.path.join(cache, "huggingface")
    return Path(os.path.expanduser(home)) / "accelerate" / "default_config.yaml"
