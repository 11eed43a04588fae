"""The ``fsdp:`` config section, validated once.

Key names are HF Accelerate's ``fsdp_config`` keys without the ``fsdp_`` prefix
(core's :mod:`plait.config.accelerate_files` strips it and turns ``sharding_strategy``
into ``reshard_after_forward``), so an Accelerate config file works as it is.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plait.config import backend_section
from plait.errors import ConfigError, closest

TRANSFORMER_BASED_WRAP = "TRANSFORMER_BASED_WRAP"
SIZE_BASED_WRAP = "SIZE_BASED_WRAP"
NO_WRAP = "NO_WRAP"
AUTO_WRAP_POLICIES = (TRANSFORMER_BASED_WRAP, SIZE_BASED_WRAP, NO_WRAP)
SHARDED_STATE_DICT = "SHARDED_STATE_DICT"
FULL_STATE_DICT = "FULL_STATE_DICT"
STATE_DICT_TYPES = (SHARDED_STATE_DICT, FULL_STATE_DICT)
REDUCE_DTYPES = ("fp32", "bf16", "fp16")

#: Accelerate keys that configure FSDP1 behaviour FSDP2 does not have (or always does): accepted, no effect.
#: ``use_orig_params`` (FSDP2 always keeps the original parameters), ``sync_module_states`` (what
#: ``cpu_ram_efficient_loading`` needs is done at prepare), ``backward_prefetch``/``forward_prefetch``
#: (FSDP2 prefetches by itself), ``version`` (always FSDP2), ``ignored_modules``, ``activation_cpu_offload``.
ACCEPTED_AND_IGNORED = (
    "use_orig_params",
    "sync_module_states",
    "backward_prefetch",
    "forward_prefetch",
    "version",
    "ignored_modules",
    "activation_cpu_offload",
    "limit_all_gathers",
)

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class FSDPOptions:
    """Options of the ``fsdp`` backend (FSDP2's ``fully_shard``)."""

    #: How sub-modules get their own ``fully_shard`` group: ``TRANSFORMER_BASED_WRAP`` (the classes in
    #: ``transformer_layer_cls_to_wrap``), ``SIZE_BASED_WRAP`` (sub-trees of at least ``min_num_params``
    #: parameters) or ``NO_WRAP`` (the root only). ``None``: chosen from the two options below.
    auto_wrap_policy: str | None = None
    #: Class names of the layers sharded as one group each (``"GPT2Block,LlamaDecoderLayer"`` or a list).
    transformer_layer_cls_to_wrap: tuple[str, ...] = ()
    #: Size-based wrapping: the smallest sub-tree (in parameters) that gets its own group.
    min_num_params: int = 0
    #: Free gathered parameters after forward (FULL_SHARD, ZeRO-3) or keep them to backward (SHARD_GRAD_OP, ZeRO-2).
    reshard_after_forward: bool = True
    #: Keep sharded parameters, gradients and optimizer state in CPU memory (``CPUOffloadPolicy``).
    offload_params: bool = False
    #: Recompute each wrapped layer's activations in backward instead of storing them.
    activation_checkpointing: bool = False
    #: Only the main process holds real weights (the others build the model on the meta device);
    #: prepare broadcasts them, each process keeping its shard.
    cpu_ram_efficient_loading: bool = False
    #: ``SHARDED_STATE_DICT``: each process writes its shards (torch.distributed.checkpoint);
    #: ``FULL_STATE_DICT``: the main process writes consolidated safetensors.
    state_dict_type: str = SHARDED_STATE_DICT
    #: The dtype gradients are reduced in under bf16/fp16 mixed precision.
    reduce_dtype: str = "fp32"
    #: Accelerate keys with no effect under FSDP2 (see :data:`ACCEPTED_AND_IGNORED`), kept for the record.
    ignored: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "transformer_layer_cls_to_wrap", _names(self.transformer_layer_cls_to_wrap))
        for name in ("reshard_after_forward", "offload_params", "activation_checkpointing",
                     "cpu_ram_efficient_loading"):
            set_(self, name, _bool(name, getattr(self, name)))
        set_(self, "min_num_params", _count(self.min_num_params))
        set_(self, "auto_wrap_policy", _choice("auto_wrap_policy", self.auto_wrap_policy, AUTO_WRAP_POLICIES, True))
        state_dict_type = self.state_dict_type
        if isinstance(state_dict_type, str) and state_dict_type.upper() == "LOCAL_STATE_DICT":
            # FSDP1's per-rank flat shards do not exist in FSDP2; sharded DCP state is its successor.
            warnings.warn("fsdp option state_dict_type='LOCAL_STATE_DICT' is FSDP1's; using SHARDED_STATE_DICT",
                          stacklevel=3)
            state_dict_type = SHARDED_STATE_DICT
        set_(self, "state_dict_type", _choice("state_dict_type", state_dict_type, STATE_DICT_TYPES, False))
        if self.reduce_dtype not in REDUCE_DTYPES:
            raise ConfigError(
                f"fsdp option reduce_dtype={self.reduce_dtype!r} is not valid: expected one of "
                f"{', '.join(map(repr, REDUCE_DTYPES))}{closest(str(self.reduce_dtype), REDUCE_DTYPES)}"
            )
        self._check_combinations()

    def _check_combinations(self) -> None:
        policy, classes, size = self.auto_wrap_policy, self.transformer_layer_cls_to_wrap, self.min_num_params
        if classes and size:
            raise ConfigError(
                f"fsdp options transformer_layer_cls_to_wrap={','.join(classes)!r} and min_num_params={size} "
                f"cannot go together: wrap by layer class or by size, so remove one of them"
            )
        if policy == NO_WRAP and (classes or size):
            other = f"transformer_layer_cls_to_wrap={','.join(classes)!r}" if classes else f"min_num_params={size}"
            raise ConfigError(
                f"fsdp options auto_wrap_policy='NO_WRAP' and {other} cannot go together: NO_WRAP shards the "
                f"root module only; remove {other.split('=')[0]} or choose another auto_wrap_policy"
            )
        if policy == SIZE_BASED_WRAP and classes:
            raise ConfigError(
                f"fsdp options auto_wrap_policy='SIZE_BASED_WRAP' and transformer_layer_cls_to_wrap="
                f"{','.join(classes)!r} cannot go together: use TRANSFORMER_BASED_WRAP for layer classes, "
                f"or set min_num_params instead"
            )
        if policy == SIZE_BASED_WRAP and not size:
            raise ConfigError(
                "fsdp option auto_wrap_policy='SIZE_BASED_WRAP' needs min_num_params: set it to the smallest "
                "number of parameters a sub-module group should hold (e.g. 100000000)"
            )
        if policy == TRANSFORMER_BASED_WRAP and size:
            raise ConfigError(
                f"fsdp options auto_wrap_policy='TRANSFORMER_BASED_WRAP' and min_num_params={size} cannot go "
                f"together: use SIZE_BASED_WRAP for wrapping by size, or remove min_num_params"
            )
        if self.activation_checkpointing and self.wrap_policy == NO_WRAP:
            raise ConfigError(
                "fsdp options activation_checkpointing=true and auto_wrap_policy='NO_WRAP' cannot go together: "
                "activation checkpointing recomputes the wrapped layers, and NO_WRAP wraps none; set "
                "transformer_layer_cls_to_wrap (or min_num_params), or turn activation_checkpointing off"
            )

    @property
    def wrap_policy(self) -> str:
        """The effective auto-wrap policy (``auto_wrap_policy``, else inferred from the other options)."""
        if self.auto_wrap_policy is not None:
            return self.auto_wrap_policy
        if self.transformer_layer_cls_to_wrap:
            return TRANSFORMER_BASED_WRAP
        if self.min_num_params:
            return SIZE_BASED_WRAP
        return NO_WRAP

    @property
    def sharded_state(self) -> bool:
        return self.state_dict_type == SHARDED_STATE_DICT

    @classmethod
    def from_section(cls, options: Mapping[str, Any] | object) -> FSDPOptions:
        """Build from a config section (a mapping) or return an ``FSDPOptions`` given in code."""
        section = backend_section("fsdp", options, cls)
        if isinstance(section, FSDPOptions):
            return section
        names = [f.name for f in dataclasses.fields(cls) if f.name != "ignored"]
        values: dict[str, Any] = {}
        ignored: list[tuple[str, Any]] = []
        for raw_key, value in section.items():
            key = str(raw_key)
            key = key[len("fsdp_"):] if key.startswith("fsdp_") else key
            if key == "sharding_strategy":
                # Accelerate's FSDP1 name, when the section did not come through core's mapping.
                key, value = "reshard_after_forward", str(value).upper() not in ("SHARD_GRAD_OP", "2",
                                                                                  "HYBRID_SHARD_ZERO2", "5")
            if key == "reshard_after_forward" and isinstance(value, str) and value.upper() in (
                    "FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2", "NO_SHARD"):
                value = value.upper() not in ("SHARD_GRAD_OP", "HYBRID_SHARD_ZERO2")
            if key in ACCEPTED_AND_IGNORED:
                if key == "version" and str(value).strip() not in ("2", "None"):
                    warnings.warn(f"fsdp option version={value!r}: plait's fsdp backend always runs FSDP2 "
                                  f"(fully_shard)", stacklevel=3)
                ignored.append((key, value))
                continue
            if key not in names:
                raise ConfigError(
                    f"unknown fsdp option {raw_key!r}{closest(key, names + list(ACCEPTED_AND_IGNORED))}; "
                    f"valid options: {', '.join(names)}"
                )
            values[key] = value
        return cls(**values, ignored=tuple(ignored))


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ConfigError(f"fsdp option {name}={value!r} is not valid: expected true or false")


def _count(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            f"fsdp option min_num_params={value!r} is not valid: expected a whole number of parameters "
            f"(0 turns size-based wrapping off)"
        )
    return value


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise ConfigError(
        f"fsdp option transformer_layer_cls_to_wrap={value!r} is not valid: expected class names, as a list "
        f"or one comma-separated string (e.g. 'GPT2Block' or 'LlamaDecoderLayer,LlamaMLP')"
    )


def _choice(name: str, value: Any, choices: tuple[str, ...], optional: bool) -> Any:
    if value is None and optional:
        return None
    text = str(value).strip().upper() if isinstance(value, str) else None
    if text not in choices:
        raise ConfigError(
            f"fsdp option {name}={value!r} is not valid: expected one of {', '.join(map(repr, choices))}"
            f"{closest(str(value).upper(), choices)}"
        )
    return text
