"""HF Accelerate's configuration objects passed to ``Accelerator(...)``, mapped onto plait's config.

``dataloader_config``, ``gradient_accumulation_plugin``, ``kwargs_handlers``, ``fsdp_plugin``,
``deepspeed_plugin(s)`` and ``dynamo_backend``/``dynamo_plugin`` become config values given as
arguments (they win over ``PLAIT_*`` and the file) and backend sections; the kwargs handlers
are kept as Accelerate keeps them (``accelerator.ddp_handler``, ``scaler_handler``...). No
backend is imported: each backend's options check its section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from plait.errors import ConfigError, not_supported

#: Accelerate's attribute for each kwargs handler class (by class name, so nothing is imported here).
HANDLER_ATTRIBUTES = {
    "DistributedDataParallelKwargs": "ddp_handler",
    "GradScalerKwargs": "scaler_handler",
    "InitProcessGroupKwargs": "init_handler",
    "AutocastKwargs": "autocast_handler",
    "ProfileKwargs": "profile_handler",
}
_FP8_HANDLERS = ("FP8RecipeKwargs", "AORecipeKwargs", "TERecipeKwargs", "MSAMPRecipeKwargs")
#: Fields of DistributedDataParallelKwargs and the ddp option each sets.
_DDP_FIELDS = ("dim", "broadcast_buffers", "bucket_cap_mb", "find_unused_parameters", "check_reduction",
               "gradient_as_bucket_view", "static_graph")
#: FullyShardedDataParallelPlugin fields passed to the fsdp section under the same name (FSDP1's have no effect).
_FSDP_SAME = ("reshard_after_forward", "activation_checkpointing", "cpu_ram_efficient_loading", "min_num_params",
              "use_orig_params", "sync_module_states", "forward_prefetch", "backward_prefetch", "limit_all_gathers")
_FSDP_REFUSED = {
    "param_init_fn": "build the model under accelerator.init_module() (or pass fsdp cpu_ram_efficient_loading=True)",
    "ignored_modules": "freeze those modules (requires_grad_(False)) instead",
}


@dataclass
class AccelerateObjects:
    """What the objects passed to ``Accelerator(...)`` amount to."""

    #: Config values, as arguments (keys of :class:`plait.config.Config`; ``sections`` for backend sections).
    arguments: dict[str, Any] = field(default_factory=dict)
    #: ``ddp_handler``, ``scaler_handler``, ... : the handlers passed, by Accelerate's attribute names.
    handlers: dict[str, Any] = field(default_factory=lambda: dict.fromkeys(HANDLER_ATTRIBUTES.values()))
    #: The backend the objects ask for (``fsdp`` for an ``fsdp_plugin``), and which argument asked.
    backend: tuple[str, str] | None = None
    #: Accelerate's ``GradientAccumulationPlugin.to_kwargs()`` (what its ``GradientState.plugin_kwargs`` holds).
    accumulation: dict[str, Any] = field(default_factory=dict)
    dataloader_config: Any = None
    fsdp_plugin: Any = None
    deepspeed_plugins: dict[str, Any] = field(default_factory=dict)
    dynamo_plugin: Any = None

    def settled(self, config: Any, backend: str, options: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
        """The run's ``DataLoaderConfiguration``, ``TorchDynamoPlugin``, ``FullyShardedDataParallelPlugin``
        and ``deepspeed_plugins``: those given, else built from the resolved ``config`` and the backend's
        ``options`` (as HF Accelerate builds them from ``accelerate launch``'s flags)."""
        from plait.utils.backend_plugins import plugins_of_the_run
        from plait.utils.dataclasses import DataLoaderConfiguration, TorchDynamoPlugin

        names = ("split_batches", "even_batches", "non_blocking", "use_seedable_sampler", "dispatch_batches", "data_seed")
        loader = self.dataloader_config or DataLoaderConfiguration(**{name: getattr(config, name) for name in names})
        dynamo = self.dynamo_plugin or TorchDynamoPlugin(backend=config.dynamo_backend)
        fsdp, deepspeed = plugins_of_the_run(backend, options, self.fsdp_plugin, self.deepspeed_plugins,
                                             config.gradient_accumulation_steps)
        return loader, dynamo, fsdp, deepspeed

    def check_backend(self, backend: str) -> None:
        """Refuse handlers the chosen ``backend`` cannot honour, naming the field and the backend. With one
        process (``single``) nothing is wrapped and DistributedDataParallel's arguments wait unused, as in
        HF Accelerate."""
        refused: list[tuple[Any, str]] = []
        if backend in ("fsdp", "zero") and self.handlers["ddp_handler"] is not None:
            refused.append((self.handlers["ddp_handler"], "it shards the model instead of DistributedDataParallel"))
        if backend == "zero" and self.handlers["scaler_handler"] is not None:
            refused.append((self.handlers["scaler_handler"], "DeepSpeed scales fp16 losses itself: set its "
                            "'fp16' block in the DeepSpeed config"))
        for handler, why in refused:
            fields = list(handler.to_kwargs())
            for name in ("comm_hook", "comm_wrapper"):
                value = getattr(handler, name, "no")
                if str(getattr(value, "value", value)) != "no":
                    fields.append(name)
            if not fields:
                continue  # at its defaults it asks for nothing
            raise ConfigError(
                f"kwargs_handlers: {type(handler).__name__}({', '.join(fields)}) cannot be honoured by backend "
                f"{backend!r}: {why}; remove it from kwargs_handlers"
            )

    def with_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """``arguments`` (the config values of ``Accelerator``'s plain arguments) with the objects' values; a
        backend named there that contradicts the one an object runs is refused."""
        merged = {**arguments, **self.arguments}
        if self.backend is not None:
            wanted, asked_by = self.backend
            if merged.setdefault("backend", wanted) != wanted:
                raise ConfigError(
                    f"backend={merged['backend']!r} contradicts {asked_by}, which runs backend {wanted!r}: pass one of them"
                )
        return merged


def read_objects(given: Mapping[str, Any]) -> AccelerateObjects:
    """Map the objects among ``Accelerator``'s given arguments; refuse what plait cannot run."""
    out = AccelerateObjects()
    for name, what in (("megatron_lm_plugin", "use backend 'fsdp' or 'zero' to shard a large model"),
                       ("torch_tp_plugin", "use backend 'fsdp' to shard the model instead of tensor parallelism"),
                       ("parallelism_config", "use backend 'fsdp' (data-parallel sharding) or 'ddp'")):
        if given.get(name) is not None:
            raise not_supported(f"Accelerator({name}=...)", what)
    _dataloader(given, out)
    _accumulation(given, out)
    _handlers(given.get("kwargs_handlers"), out)
    _dynamo(given, out)
    if given.get("fsdp_plugin") is not None:
        out.fsdp_plugin = given["fsdp_plugin"]
        out.arguments.setdefault("sections", {})["fsdp"] = fsdp_section(given["fsdp_plugin"])
        out.backend = ("fsdp", "fsdp_plugin")
    plugins = given.get("deepspeed_plugins")
    if plugins is None:
        plugins = given.get("deepspeed_plugin")
    elif given.get("deepspeed_plugin") is not None:
        raise ValueError("pass deepspeed_plugin or deepspeed_plugins, not both: they are the same argument")
    if plugins is not None:
        _deepspeed(plugins, out)
    return out


def _dataloader(given: Mapping[str, Any], out: AccelerateObjects) -> None:
    config = given.get("dataloader_config")
    if config is None:
        return
    from plait.utils.dataclasses import DataLoaderConfiguration

    if not isinstance(config, DataLoaderConfiguration):
        raise TypeError(f"dataloader_config={config!r}: expected a plait.utils.DataLoaderConfiguration")
    for name in ("split_batches", "even_batches"):
        if name in given and given[name] != getattr(config, name):
            raise ValueError(
                f"{name}={given[name]!r} contradicts dataloader_config.{name}={getattr(config, name)!r}: "
                f"set it in DataLoaderConfiguration only"
            )
    out.dataloader_config = config
    for name in ("split_batches", "even_batches", "use_seedable_sampler", "non_blocking"):
        out.arguments[name] = bool(getattr(config, name))
    if config.dispatch_batches is not None:
        out.arguments["dispatch_batches"] = bool(config.dispatch_batches)
    if config.data_seed is not None:
        out.arguments["data_seed"] = config.data_seed


def _accumulation(given: Mapping[str, Any], out: AccelerateObjects) -> None:
    plugin = given.get("gradient_accumulation_plugin")
    if plugin is None:
        return
    from plait.utils.dataclasses import GradientAccumulationPlugin

    if not isinstance(plugin, GradientAccumulationPlugin):
        raise TypeError(f"gradient_accumulation_plugin={plugin!r}: expected a plait.utils.GradientAccumulationPlugin")
    if given.get("gradient_accumulation_steps", 1) != 1:
        raise ValueError(
            "pass gradient_accumulation_steps or gradient_accumulation_plugin, not both: set "
            "GradientAccumulationPlugin(num_steps=...) only"
        )
    out.accumulation = plugin.to_kwargs()
    if plugin.num_steps is not None:
        out.arguments["gradient_accumulation_steps"] = plugin.num_steps


def _handlers(handlers: Sequence[Any] | None, out: AccelerateObjects) -> None:
    from plait.utils.dataclasses import KwargsHandler

    seen: set[type] = set()
    for handler in handlers or ():
        kind = type(handler).__name__
        if kind in _FP8_HANDLERS:
            raise not_supported(f"kwargs_handlers=[{kind}(...)] (FP8 training)", 'use mixed_precision="bf16"')
        if not isinstance(handler, KwargsHandler) or kind not in HANDLER_ATTRIBUTES:
            raise TypeError(
                f"kwargs_handlers contains {handler!r}: expected DistributedDataParallelKwargs, GradScalerKwargs, "
                f"InitProcessGroupKwargs, AutocastKwargs or ProfileKwargs from plait.utils"
            )
        if type(handler) in seen:
            raise ValueError(f"kwargs_handlers has two {kind} objects: pass one")
        seen.add(type(handler))
        out.handlers[HANDLER_ATTRIBUTES[kind]] = handler
    ddp = out.handlers["ddp_handler"]
    if ddp is not None:
        section = {name: value for name, value in ddp.to_kwargs().items() if name in _DDP_FIELDS}
        for name in ("comm_hook", "comm_wrapper"):
            value = str(getattr(getattr(ddp, name), "value", getattr(ddp, name)))
            if value != "no":
                section[name] = value
        if ddp.comm_state_option:
            section["comm_state_option"] = dict(ddp.comm_state_option)
        out.arguments.setdefault("sections", {})["ddp"] = section
    init = out.handlers["init_handler"]
    if init is not None:
        out.arguments["process_group_timeout"] = max(1, int(init.timeout.total_seconds()))
        if "backend" in init.to_kwargs() and init.backend is not None:
            out.arguments["process_group_backend"] = str(init.backend)
        if init.init_method is not None:
            raise ConfigError(
                f"InitProcessGroupKwargs(init_method={init.init_method!r}): plait starts the process group from the "
                f"launcher's variables (env://); start the job with `plait launch` or torchrun instead"
            )


def _dynamo(given: Mapping[str, Any], out: AccelerateObjects) -> None:
    from plait.utils.dataclasses import TorchDynamoPlugin

    backend, plugin = given.get("dynamo_backend"), given.get("dynamo_plugin")
    if backend is not None and plugin is not None:
        raise ValueError("pass dynamo_backend or dynamo_plugin, not both: put the backend in TorchDynamoPlugin(backend=...)")
    if plugin is not None and not isinstance(plugin, TorchDynamoPlugin):
        raise TypeError(f"dynamo_plugin={plugin!r}: expected a plait.utils.TorchDynamoPlugin")
    if backend is not None:
        plugin = TorchDynamoPlugin(backend=backend)
    if plugin is not None:
        out.dynamo_plugin = plugin
        out.arguments["dynamo_backend"] = plugin.to_dict()["backend"]


def fsdp_section(plugin: Any) -> dict[str, Any]:
    """The ``fsdp:`` section a ``FullyShardedDataParallelPlugin`` describes (fields left ``None`` omitted)."""
    from plait.utils.dataclasses import FullyShardedDataParallelPlugin

    if not isinstance(plugin, FullyShardedDataParallelPlugin):
        raise TypeError(f"fsdp_plugin={plugin!r}: expected a plait.FullyShardedDataParallelPlugin")
    for name, instead in _FSDP_REFUSED.items():
        if getattr(plugin, name) is not None:
            raise ConfigError(f"fsdp_plugin.{name} is not supported by backend 'fsdp': {instead}")
    section: dict[str, Any] = {name: getattr(plugin, name) for name in _FSDP_SAME if getattr(plugin, name) is not None}
    for name in ("reshard_after_forward", "backward_prefetch"):
        if name in section and not isinstance(section[name], (bool, str)):
            section[name] = _enum_name(section[name])
    if plugin.fsdp_version is not None:
        section["version"] = plugin.fsdp_version
    if plugin.sharding_strategy is not None:
        section["sharding_strategy"] = _enum_name(plugin.sharding_strategy)
    if plugin.state_dict_type is not None:
        section["state_dict_type"] = _enum_name(plugin.state_dict_type)
    _state_dict_configs(plugin, section)
    policy = plugin.auto_wrap_policy
    if policy is not None:
        if callable(policy):
            raise ConfigError(
                f"fsdp_plugin.auto_wrap_policy={policy!r} is a function, which backend 'fsdp' cannot honour: give "
                f"'transformer_based_wrap' with transformer_cls_names_to_wrap, 'size_based_wrap' with "
                f"min_num_params, or 'no_wrap'"
            )
        section["auto_wrap_policy"] = str(policy).upper()
    names = plugin.transformer_cls_names_to_wrap
    if names is not None:
        section["transformer_layer_cls_to_wrap"] = [names] if isinstance(names, str) else list(names)
    offload = plugin.cpu_offload
    if offload is not None:
        # A bool, or torch's CPUOffload(offload_params=...) / CPUOffloadPolicy (FSDP2's: always offloads).
        section["offload_params"] = bool(getattr(offload, "offload_params", True)) if not isinstance(offload, bool) \
            else offload
    policy_object = plugin.mixed_precision_policy
    if policy_object is not None:
        section.update(_fsdp_mixed_precision(policy_object))
    from plait.config.accelerate_files import fsdp_section as accelerate_keys

    return accelerate_keys(section)


def _state_dict_configs(plugin: Any, section: dict[str, Any]) -> None:
    """torch's ``FullStateDictConfig``/``ShardedStateDictConfig`` (and the optimizer's) say which state dict
    type they configure: FULL or SHARDED, the same for both, and agreeing with ``state_dict_type``. Their
    options (``offload_to_cpu``, ``rank0_only``) are what plait's fsdp backend always does: full state dicts
    are gathered to the CPU of the main process."""
    for name in ("state_dict_config", "optim_state_dict_config"):
        config = getattr(plugin, name)
        if config is None:
            continue
        kind = type(config).__name__
        wanted = "FULL_STATE_DICT" if kind.startswith("Full") else "SHARDED_STATE_DICT" if kind.startswith("Sharded") \
            else None
        if wanted is None:
            raise ConfigError(
                f"fsdp_plugin.{name}={kind}(...) is not supported by backend 'fsdp': pass torch's Full... or "
                f"Sharded...StateDictConfig, or set state_dict_type='FULL_STATE_DICT' or 'SHARDED_STATE_DICT'"
            )
        chosen = section.setdefault("state_dict_type", wanted)
        if str(chosen).upper() != wanted:
            raise ConfigError(
                f"fsdp_plugin.{name}={kind}(...) configures {wanted}, but state_dict_type={chosen!r}: make them "
                f"agree (or drop {name})"
            )


def _fsdp_mixed_precision(policy: Any) -> dict[str, Any]:
    import torch

    values = dict(policy) if isinstance(policy, Mapping) else {
        name: getattr(policy, name) for name in ("param_dtype", "reduce_dtype", "output_dtype", "buffer_dtype")
        if getattr(policy, name, None) is not None
    }
    names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16",
             "float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "fp32": "fp32", "bf16": "bf16", "fp16": "fp16"}
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        if name != "reduce_dtype":
            raise ConfigError(
                f"fsdp_plugin.mixed_precision_policy.{name}={value!r} is not supported by backend 'fsdp': set "
                f"Accelerator(mixed_precision='bf16' or 'fp16') for the parameters' dtype; only reduce_dtype is taken"
            )
        if value not in names:
            raise ConfigError(f"fsdp_plugin.mixed_precision_policy.reduce_dtype={value!r}: expected float32, bfloat16 "
                              f"or float16")
        out["reduce_dtype"] = names[value]
    return out


def _enum_name(value: Any) -> Any:
    """``ShardingStrategy.FULL_SHARD`` -> ``"FULL_SHARD"``; strings and bools unchanged."""
    return getattr(value, "name", value)


def zero_section(plugin: Any) -> dict[str, Any]:
    """The ``zero:`` section a ``DeepSpeedPlugin`` describes (fields left ``None`` omitted)."""
    from plait.utils.dataclasses import DeepSpeedPlugin

    if not isinstance(plugin, DeepSpeedPlugin):
        raise TypeError(f"deepspeed_plugin={plugin!r}: expected a plait.DeepSpeedPlugin")
    if plugin.transformer_moe_cls_names is not None:
        raise ConfigError(
            f"deepspeed_plugin.transformer_moe_cls_names={plugin.transformer_moe_cls_names!r} is not supported by "
            f"backend 'zero': leave it unset (plait does not mark MoE layers as DeepSpeed leaf modules)"
        )
    mapping = {
        "zero_stage": "stage", "gradient_clipping": "gradient_clipping",
        "offload_optimizer_device": "offload_optimizer_device", "offload_param_device": "offload_param_device",
        "offload_optimizer_nvme_path": "offload_optimizer_nvme_path", "offload_param_nvme_path": "offload_param_nvme_path",
        "zero3_init_flag": "zero3_init", "zero3_save_16bit_model": "save_16bit_model",
    }
    section = {key: getattr(plugin, name) for name, key in mapping.items() if getattr(plugin, name) is not None}
    if plugin.hf_ds_config is not None:
        section["config_file"] = plugin.hf_ds_config
    return section


def _deepspeed(plugins: Any, out: AccelerateObjects) -> None:
    named = dict(plugins) if isinstance(plugins, Mapping) else {"default": plugins}
    if not named:
        raise ValueError("deepspeed_plugins={} is empty: give at least one DeepSpeedPlugin")
    sections = {name: zero_section(plugin) for name, plugin in named.items()}
    active = next((name for name, plugin in named.items() if plugin.selected), next(iter(named)))
    for name, plugin in named.items():
        plugin.selected = name == active
    out.deepspeed_plugins = named
    # Several plugins: the zero backend's named configs, each complete, the active one first (it starts active).
    ordered = {active: sections[active], **sections}
    out.arguments.setdefault("sections", {})["zero"] = sections[active] if len(named) == 1 else {"plugins": ordered}
    steps = named[active].gradient_accumulation_steps
    if isinstance(steps, int) and not isinstance(steps, bool) and "gradient_accumulation_steps" not in out.arguments:
        out.arguments["gradient_accumulation_steps"] = steps
    out.backend = ("zero", "deepspeed_plugin")

