"""The DeepSpeed config handed to ``deepspeed.initialize``: the user's JSON with its ``"auto"`` values
filled from the Accelerator, the ``zero:`` options and the prepared dataloader.

A value given both in the JSON and by the Accelerator (or the ``zero:`` options)
must agree: a disagreement is an error naming both, never a silent choice. No
torch or deepspeed import here.
"""

from __future__ import annotations

import copy
from typing import Any

from plait.errors import ConfigError
from plait_zero.dummies import Dummies, check_blocks, fill_blocks
from plait_zero.options import DEFAULT_STAGE, ZeroOptions

AUTO = "auto"
#: ``zero_optimization`` keys whose ``"auto"`` HF Accelerate fills from a transformers model's
#: hidden size; without one, DeepSpeed's own default is the right value, so they are dropped.
_TUNING_KEYS = (
    "reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold", "stage3_max_live_parameters", "stage3_max_reuse_distance",
    "sub_group_size", "overlap_comm", "contiguous_gradients", "reduce_scatter", "round_robin_gradients",
)


def _source(options: ZeroOptions) -> str:
    if options.config_file is None:
        return "the DeepSpeed config"
    if isinstance(options.config_file, str):
        return f"DeepSpeed config {options.config_file}"
    return "the DeepSpeed config dict (config_file)"


class _Filler:
    def __init__(self, options: ZeroOptions) -> None:
        self.source = _source(options)

    def fill(self, block: dict[str, Any], key: str, path: str, ours: Any, ours_name: str, given: bool = True) -> Any:
        """Set ``block[key]`` to ``ours`` when absent or ``"auto"``; when the JSON has a value, it must equal
        ours if ours was given explicitly (``given``), else the JSON's value stands."""
        theirs = block.get(key, AUTO)
        if theirs == AUTO:
            block[key] = ours
            return ours
        if given and theirs != ours:
            raise ConfigError(
                f"{self.source} sets {path}={theirs!r} but {ours_name} is {ours!r}: make the two agree, or set "
                f"{path} to \"auto\" in the JSON (plait fills it)"
            )
        return theirs


def build_config(
    options: ZeroOptions,
    *,
    micro_batch_size: int | None,
    gradient_accumulation_steps: int,
    world_size: int,
    mixed_precision: str,
    has_optimizer: bool,
    has_scheduler: bool,
    dummies: Dummies | None = None,
) -> dict[str, Any]:
    """The complete DeepSpeed config for one engine.

    :param micro_batch_size: the prepared dataloader's batch size per process, or ``None`` when
        no dataloader was prepared (then the JSON's value, else 1).
    :param gradient_accumulation_steps: the Accelerator's (1, the default, gives way to the JSON's value).
    :param world_size: the number of processes.
    :param mixed_precision: the Accelerator's ``"no"``, ``"fp16"`` or ``"bf16"``.
    :param has_optimizer: a torch optimizer was given (then the JSON has no ``"optimizer"`` block).
    :param has_scheduler: a torch scheduler was given (then the JSON has no ``"scheduler"`` block).
    :param dummies: what a ``DummyOptim``/``DummyScheduler`` asks DeepSpeed to build from the JSON's blocks, and
        the values of their ``"auto"`` entries.
    """
    config = copy.deepcopy(options.user_config)
    f = _Filler(options)
    dummies = dummies or Dummies()
    check_blocks(config, f.source, has_optimizer, has_scheduler, dummies)
    fill_blocks(config, f.source, dummies)

    micro = f.fill(config, "train_micro_batch_size_per_gpu", "train_micro_batch_size_per_gpu",
                   micro_batch_size if micro_batch_size is not None else 1,
                   "the prepared dataloader's batch size per process", given=micro_batch_size is not None)
    # The Accelerator's default (1) yields to the JSON, which the Accelerator then adopts (see prepare_jointly).
    gas = f.fill(config, "gradient_accumulation_steps", "gradient_accumulation_steps", gradient_accumulation_steps,
                 "Accelerator(gradient_accumulation_steps=...)", given=gradient_accumulation_steps != 1)
    f.fill(config, "train_batch_size", "train_batch_size", micro * gas * world_size,
           f"the batch size per process x gradient_accumulation_steps x processes ({micro} x {gas} x {world_size})")

    for name in ("fp16", "bf16"):
        block = config.setdefault(name, {})
        if not isinstance(block, dict):
            raise ConfigError(f"{f.source}: {name}={block!r} is not valid: expected an object such as "
                              f"{{\"enabled\": \"auto\"}}")
        f.fill(block, "enabled", f"{name}.enabled", mixed_precision == name,
               f"{name} per the Accelerator's mixed_precision={mixed_precision!r}, so {name}.enabled")
    if "bfloat16" in config:  # DeepSpeed's older spelling of bf16
        config["bf16"].update(config.pop("bfloat16"))

    f.fill(config, "gradient_clipping", "gradient_clipping",
           options.gradient_clipping if options.gradient_clipping is not None else 0.0,
           "zero option gradient_clipping", given=options.gradient_clipping is not None)

    zero = config.setdefault("zero_optimization", {})
    stage = f.fill(zero, "stage", "zero_optimization.stage",
                   options.stage if options.stage is not None else DEFAULT_STAGE,
                   "zero option stage", given=options.stage is not None)
    for kind in ("optimizer", "param"):
        device = getattr(options, f"offload_{kind}_device")
        path = getattr(options, f"offload_{kind}_nvme_path")
        block = zero.get(f"offload_{kind}")
        if block is None and device in (None, "none"):
            continue
        block = zero.setdefault(f"offload_{kind}", {}) if block is None else block
        f.fill(block, "device", f"zero_optimization.offload_{kind}.device", device or "none",
               f"zero option offload_{kind}_device", given=device is not None)
        if path is not None:
            f.fill(block, "nvme_path", f"zero_optimization.offload_{kind}.nvme_path", path,
                   f"zero option offload_{kind}_nvme_path")
        if block.get("device") == "nvme" and block.get("nvme_path") in (None, AUTO):
            raise ConfigError(
                f"{f.source} offloads {kind} states to nvme without zero_optimization.offload_{kind}.nvme_path: "
                f"name the NVMe directory (or the zero option offload_{kind}_nvme_path)"
            )
        block.setdefault("pin_memory", False)
    if stage != 3 and zero.get("offload_param", {}).get("device", "none") != "none":
        raise ConfigError(f"{f.source}: zero_optimization.offload_param needs stage 3, but the stage is {stage}")
    if options.save_16bit_model:
        f.fill(zero, "stage3_gather_16bit_weights_on_model_save",
               "zero_optimization.stage3_gather_16bit_weights_on_model_save", True, "zero option save_16bit_model")
    for key in _TUNING_KEYS:
        if zero.get(key) == AUTO:
            del zero[key]

    # A torch optimizer is what plait hands over; DeepSpeed would otherwise refuse every optimizer it did not test.
    config.setdefault("zero_allow_untested_optimizer", True)
    if zero.get("offload_optimizer", {}).get("device", "none") != "none":
        config.setdefault("zero_force_ds_cpu_optimizer", False)
    config.setdefault("steps_per_print", 2**31 - 1)  # no progress lines from DeepSpeed every 10 steps

    left = _auto_paths(config)
    if left:
        raise ConfigError(
            f"Give numbers at {', '.join(left)} in {f.source}: plait cannot fill \"auto\" there (it fills batch "
            f"sizes, gradient_accumulation_steps, fp16/bf16, gradient_clipping, ZeRO stage/offload, and from "
            f"DummyOptim/DummyScheduler the optimizer's lr and weight_decay and the scheduler's warmup_min_lr, "
            f"warmup_max_lr, warmup_num_steps and total_num_steps)"
        )
    return config


def _auto_paths(value: Any, prefix: str = "") -> list[str]:
    if value == AUTO:
        return [prefix or "(top)"]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _auto_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    return []
