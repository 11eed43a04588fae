"""HF Accelerate's backend plugins, ``FullyShardedDataParallelPlugin`` and ``DeepSpeedPlugin``, as plain
dataclasses (re-exported by :mod:`plait.utils.dataclasses`); :mod:`plait.config.objects` maps them onto
the ``fsdp:`` and ``zero:`` sections, which the backends check."""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class FullyShardedDataParallelPlugin:
    """FSDP's settings (Accelerate's fields), run by plait's ``fsdp`` backend (FSDP2's ``fully_shard``).

    A field left ``None`` is not given: the config's ``fsdp:`` section decides. Fields of FSDP1 that
    FSDP2 does not have are accepted and have no effect, as the ``fsdp:`` section's are.
    """

    fsdp_version: int | None = None
    sharding_strategy: Any = None
    reshard_after_forward: Any = None
    backward_prefetch: Any = None
    mixed_precision_policy: Any = None
    auto_wrap_policy: Any = None
    cpu_offload: Any = None
    ignored_modules: Any = None
    state_dict_type: Any = None
    state_dict_config: Any = None
    optim_state_dict_config: Any = None
    limit_all_gathers: bool | None = None
    use_orig_params: bool | None = None
    param_init_fn: Any = None
    sync_module_states: bool | None = None
    forward_prefetch: bool | None = None
    activation_checkpointing: bool | None = None
    cpu_ram_efficient_loading: bool | None = None
    transformer_cls_names_to_wrap: list[str] | str | None = None
    min_num_params: int | None = None

    def __post_init__(self) -> None:
        if self.fsdp_version is not None and self.fsdp_version not in (1, 2):
            raise ValueError(f"FullyShardedDataParallelPlugin(fsdp_version={self.fsdp_version!r}): expected 1 or 2")


#: ``DeepSpeedPlugin`` fields and where each lives in the DeepSpeed config.
_CONFIG_PATHS = {
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "gradient_clipping": "gradient_clipping",
    "zero_stage": "zero_optimization.stage",
    "offload_optimizer_device": "zero_optimization.offload_optimizer.device",
    "offload_param_device": "zero_optimization.offload_param.device",
    "offload_optimizer_nvme_path": "zero_optimization.offload_optimizer.nvme_path",
    "offload_param_nvme_path": "zero_optimization.offload_param.nvme_path",
    "zero3_save_16bit_model": "zero_optimization.stage3_gather_16bit_weights_on_model_save",
}


def _get(config: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        if not isinstance(config, dict) or key not in config:
            return None
        config = config[key]
    return config


def _set(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


@dataclass
class DeepSpeedPlugin:
    """DeepSpeed's settings (Accelerate's fields), run by plait's ``zero`` backend.

    :param hf_ds_config: a DeepSpeed JSON file's path, or its contents as a dict.
    A field left ``None`` is not given: the DeepSpeed JSON, then the config's ``zero:`` section, decide.
    :attr:`deepspeed_config` is the DeepSpeed config as Accelerate builds it (``"auto"`` values are
    filled by the backend when the engine is built).
    """

    hf_ds_config: Any = None
    gradient_accumulation_steps: int | None = None
    gradient_clipping: float | None = None
    zero_stage: int | None = None
    is_train_batch_min: bool = True
    offload_optimizer_device: str | None = None
    offload_param_device: str | None = None
    offload_optimizer_nvme_path: str | None = None
    offload_param_nvme_path: str | None = None
    zero3_init_flag: bool | None = None
    zero3_save_16bit_model: bool | None = None
    transformer_moe_cls_names: str | None = None
    enable_msamp: bool | None = None
    msamp_opt_level: str | None = None
    #: Whether this plugin is the active one of ``deepspeed_plugins`` (Accelerate's ``selected``).
    selected: bool = field(default=False, repr=False)
    deepspeed_config: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.enable_msamp:
            from plait.errors import not_supported

            raise not_supported("DeepSpeedPlugin(enable_msamp=True) (MS-AMP fp8)", 'use mixed_precision="bf16"')
        config = self.hf_ds_config
        if hasattr(config, "config") and isinstance(config.config, dict):  # transformers' HfDeepSpeedConfig
            config = self.hf_ds_config = dict(config.config)
        if isinstance(config, (str, os.PathLike)) and str(config).strip().lower() not in ("", "none"):
            path = Path(config)
            try:
                self.deepspeed_config = json.loads(path.read_text())
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"DeepSpeedPlugin(hf_ds_config={str(config)!r}): no such file; give the path of a DeepSpeed "
                    f"JSON config, or its contents as a dict"
                ) from None
            except json.JSONDecodeError as exc:
                raise ValueError(f"DeepSpeedPlugin(hf_ds_config={str(config)!r}) is not valid JSON: {exc}") from None
        elif isinstance(config, dict):
            self.deepspeed_config = copy.deepcopy(config)
        elif config is not None and not isinstance(config, str):
            raise TypeError(
                f"DeepSpeedPlugin(hf_ds_config={config!r}): expected the path of a DeepSpeed JSON file or a dict"
            )
        else:
            self.hf_ds_config = None
            self.deepspeed_config = self._built_config()
        self.deepspeed_config.setdefault("zero_optimization", {})
        for name, where in _CONFIG_PATHS.items():
            # As HF Accelerate: a value the JSON sets wins over the field; the field fills a missing or "auto" one.
            found = _get(self.deepspeed_config, where)
            if found is not None and found != "auto":
                setattr(self, name, float(found) if name == "gradient_clipping" else found)
            elif getattr(self, name) is not None:
                _set(self.deepspeed_config, where, getattr(self, name))
        if self.zero3_init_flag is None and self.zero_stage is not None:
            self.zero3_init_flag = self.zero_stage == 3  # Accelerate's default: on under ZeRO-3
        self.deepspeed_config["steps_per_print"] = float("inf")

    def _built_config(self) -> dict[str, Any]:
        zero: dict[str, Any] = {}
        if self.zero_stage is not None:
            zero["stage"] = self.zero_stage
        for kind in ("optimizer", "param"):
            device = getattr(self, f"offload_{kind}_device")
            if device is not None:
                zero[f"offload_{kind}"] = {"device": device, "nvme_path": getattr(self, f"offload_{kind}_nvme_path")}
        if self.zero3_save_16bit_model is not None:
            zero["stage3_gather_16bit_weights_on_model_save"] = self.zero3_save_16bit_model
        config: dict[str, Any] = {
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": self.gradient_accumulation_steps or "auto",
            "zero_optimization": zero,
        }
        if self.gradient_clipping:
            config["gradient_clipping"] = self.gradient_clipping
        return config

    def select(self, _from_accelerator_state: bool = False) -> None:
        """Mark this plugin active (``accelerator.state.select_deepspeed_plugin(name)`` does this)."""
        self.selected = True


class DummyOptim:
    """Stands for the optimizer a DeepSpeed JSON's ``optimizer`` block defines (``accelerator.prepare`` builds it)."""

    def __init__(self, params: Any, lr: float = 0.001, weight_decay: float = 0.0, **kwargs: Any) -> None:
        self.params, self.lr, self.weight_decay, self.kwargs = params, lr, weight_decay, kwargs


class DummyScheduler:
    """Stands for the scheduler a DeepSpeed JSON's ``scheduler`` block defines (``accelerator.prepare`` builds it)."""

    def __init__(self, optimizer: Any, total_num_steps: int | None = None, warmup_num_steps: int = 0,
                 lr_scheduler_callable: Any = None, **kwargs: Any) -> None:
        self.optimizer, self.total_num_steps, self.warmup_num_steps = optimizer, total_num_steps, warmup_num_steps
        self.lr_scheduler_callable, self.kwargs = lr_scheduler_callable, kwargs




def active_deepspeed_plugin(accelerator: Any) -> DeepSpeedPlugin | None:
    """The active one of ``accelerator.deepspeed_plugins``: the zero backend's selected named config when it
    has several (``backend_options.select(name)`` may have changed it), else the one marked ``selected``."""
    plugins: dict[str, DeepSpeedPlugin] = getattr(accelerator, "deepspeed_plugins", None) or {}
    selected = getattr(getattr(accelerator, "backend_options", None), "selected", None)
    if isinstance(selected, str) and selected in plugins:
        return plugins[selected]
    return next((plugin for plugin in plugins.values() if plugin.selected), None)


def get_active_deepspeed_plugin(state: Any) -> DeepSpeedPlugin:
    """The active ``DeepSpeedPlugin`` of ``state`` (an ``AcceleratorState``; HF Accelerate's function)."""
    accelerator = getattr(state, "accelerator", None)
    active = active_deepspeed_plugin(accelerator if accelerator is not None else state)
    if active is None:
        raise ValueError("no DeepSpeedPlugin is active: pass deepspeed_plugin= or deepspeed_plugins= to Accelerator")
    return active


def select_deepspeed_plugin(state: Any, name: str | None = None) -> None:
    """Make plugin ``name`` of ``deepspeed_plugins`` the active one (``AcceleratorState.select_deepspeed_plugin``):
    the models prepared or built (``init_module``) from now on use its config; engines already built keep theirs."""
    plugins = getattr(state, "deepspeed_plugins", None) or {}
    if name not in plugins:
        raise ValueError(
            f"select_deepspeed_plugin({name!r}): no such DeepSpeedPlugin; the names are "
            f"{', '.join(map(repr, plugins)) or 'none (pass deepspeed_plugins={name: plugin} to Accelerator)'}"
        )
    accelerator = getattr(state, "accelerator", None)
    options: Any = getattr(accelerator, "backend_options", None)
    if len(plugins) > 1 and hasattr(options, "select"):
        options.select(name)  # the zero backend's named configs
    for key, plugin in plugins.items():
        plugin.selected = key == name


def refuse_dummy(obj: Any, backend: str) -> None:
    """Refuse a ``DummyOptim`` or ``DummyScheduler`` on a backend that does not build them from a DeepSpeed config."""
    if isinstance(obj, (DummyOptim, DummyScheduler)):
        kind = "optimizer" if isinstance(obj, DummyOptim) else "scheduler"
        raise ValueError(
            f"{type(obj).__name__} stands for the {kind} of a DeepSpeed config's {kind!r} block, which backend "
            f"{backend!r} does not build: pass a torch {kind}, or run backend 'zero' (--use_deepspeed) with a "
            f"DeepSpeed config that has an {kind!r} block"
        )


#: ``zero:`` option -> ``DeepSpeedPlugin`` field.
_ZERO_FIELDS = {
    "stage": "zero_stage", "offload_optimizer_device": "offload_optimizer_device",
    "offload_param_device": "offload_param_device", "offload_optimizer_nvme_path": "offload_optimizer_nvme_path",
    "offload_param_nvme_path": "offload_param_nvme_path", "gradient_clipping": "gradient_clipping",
    "zero3_init": "zero3_init_flag", "save_16bit_model": "zero3_save_16bit_model", "config_file": "hf_ds_config",
}
#: ``fsdp:`` option -> ``FullyShardedDataParallelPlugin`` field.
_FSDP_FIELDS = {
    "auto_wrap_policy": "auto_wrap_policy", "transformer_layer_cls_to_wrap": "transformer_cls_names_to_wrap",
    "min_num_params": "min_num_params", "reshard_after_forward": "reshard_after_forward",
    "offload_params": "cpu_offload", "activation_checkpointing": "activation_checkpointing",
    "cpu_ram_efficient_loading": "cpu_ram_efficient_loading", "state_dict_type": "state_dict_type",
}


def plugins_of_the_run(backend: str, options: Any, fsdp_plugin: Any, deepspeed_plugins: dict[str, Any],
                       accumulation_steps: int) -> tuple[Any, dict[str, Any]]:
    """``accelerator.fsdp_plugin`` and ``deepspeed_plugins``: those passed, else, as HF Accelerate builds them
    when ``accelerate launch --use_fsdp/--use_deepspeed`` started the run, plugins describing the backend's
    options (so that ``accelerator.state.deepspeed_plugin.deepspeed_config`` shows the DeepSpeed config)."""
    if backend == "fsdp" and fsdp_plugin is None and options is not None:
        values = {field: getattr(options, key) for key, field in _FSDP_FIELDS.items() if hasattr(options, key)}
        fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2, **values)
    if backend == "zero" and not deepspeed_plugins and options is not None:
        named = getattr(options, "plugins", None) or {"default": options}
        for name, entry in named.items():
            values = {field: getattr(entry, key) for key, field in _ZERO_FIELDS.items()
                      if getattr(entry, key, None) is not None}
            deepspeed_plugins[name] = DeepSpeedPlugin(gradient_accumulation_steps=accumulation_steps, **values)
        selected = getattr(options, "selected", None)
        for name, plugin in deepspeed_plugins.items():
            plugin.selected = name == (selected if selected in deepspeed_plugins else next(iter(deepspeed_plugins)))
    return fsdp_plugin, deepspeed_plugins
