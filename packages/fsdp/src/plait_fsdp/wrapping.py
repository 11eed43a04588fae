"""Sharding a model with FSDP2's ``fully_shard``: which sub-modules get a group, the policies, and
re-binding an optimizer built before ``prepare`` to the sharded parameters.

Imported from hook bodies only (it imports torch).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from plait.errors import ConfigError
from plait_fsdp.options import NO_WRAP, SIZE_BASED_WRAP, TRANSFORMER_BASED_WRAP, FSDPOptions

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def is_sharded(model: nn.Module) -> bool:
    """Whether ``fully_shard`` has sharded ``model``."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def layers_to_wrap(model: nn.Module, options: FSDPOptions) -> list[nn.Module]:
    """The sub-modules (never the root) that get their own ``fully_shard`` group, children first."""
    policy = options.wrap_policy
    if policy == NO_WRAP:
        return []
    if policy == TRANSFORMER_BASED_WRAP:
        names = options.transformer_layer_cls_to_wrap or tuple(getattr(model, "_no_split_modules", None) or ())
        if not names:
            raise ConfigError(
                f"fsdp option auto_wrap_policy='TRANSFORMER_BASED_WRAP' needs transformer_layer_cls_to_wrap: "
                f"name the layer classes of {type(model).__name__} to shard one by one "
                f"(it contains {', '.join(_class_names(model))})"
            )
        present = {type(m).__name__ for m in model.modules()}
        missing = [n for n in names if n not in present]
        if missing:
            raise ConfigError(
                f"fsdp option transformer_layer_cls_to_wrap names {', '.join(map(repr, missing))}, which "
                f"{'is' if len(missing) == 1 else 'are'} not in the model {type(model).__name__}: it contains the "
                f"module classes {', '.join(_class_names(model))}; name one of those (its class name, e.g. the "
                f"repeated block)"
            )
        wanted = set(names)
        return [m for name, m in model.named_modules() if name and type(m).__name__ in wanted][::-1]
    assert policy == SIZE_BASED_WRAP
    return _size_based(model, options.min_num_params)


def _class_names(model: nn.Module) -> list[str]:
    return list(dict.fromkeys(type(m).__name__ for m in model.modules()))


_CONTAINERS = (nn.ModuleList, nn.ModuleDict)


def _size_based(model: nn.Module, min_num_params: int) -> list[nn.Module]:
    """Post-order: a sub-module is wrapped when the parameters not already in a wrapped descendant
    reach ``min_num_params`` (FSDP1's ``size_based_auto_wrap_policy``, for fully_shard)."""
    chosen: list[nn.Module] = []

    def visit(module: nn.Module, is_root: bool) -> int:
        remaining = sum(visit(child, False) for child in module.children())
        remaining += sum(p.numel() for p in module.parameters(recurse=False))
        # Containers never run forward, so FSDP's hooks would never gather their parameters.
        if not is_root and remaining >= min_num_params and not isinstance(module, _CONTAINERS):
            chosen.append(module)
            return 0
        return remaining

    visit(model, True)
    return chosen


def _mesh(accelerator: Any) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(accelerator.device.type, (accelerator.num_processes,))


def shard_model(accelerator: Any, model: nn.Module, options: FSDPOptions) -> nn.Module:
    """Apply ``fully_shard`` to the chosen layers and then the root; return the (same) model."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    layers = layers_to_wrap(model, options)
    meta = any(p.is_meta for p in model.parameters())
    problem = None
    if options.cpu_ram_efficient_loading and accelerator.is_main_process and meta:
        problem = (
            "fsdp option cpu_ram_efficient_loading=true needs real weights on the main process, but its model "
            "has parameters on the meta device: build the model for real on the main process (the others may "
            "use torch.device('meta'))"
        )
    elif meta and not options.cpu_ram_efficient_loading:
        problem = (
            f"the model on process {accelerator.process_index} has parameters on the meta device, but fsdp option "
            f"cpu_ram_efficient_loading is off: turn it on (the main process's weights are then broadcast at "
            f"prepare) or build the model for real"
        )
    # Meta parameters differ between processes: agree before any collective, so every process raises, none hangs.
    problems = [p for p in accelerator.gather_object([problem]) if p is not None]
    if problems:
        raise ConfigError(problems[0])
    full_state: dict[str, Any] | None = None
    if options.cpu_ram_efficient_loading:
        full_state = model.state_dict() if accelerator.is_main_process else {}

    mixed = accelerator.mixed_precision
    policy = MixedPrecisionPolicy()
    if mixed in ("bf16", "fp16"):
        policy = MixedPrecisionPolicy(param_dtype=_DTYPES[mixed], reduce_dtype=_DTYPES[options.reduce_dtype])
    offload = OffloadPolicy()
    if options.offload_params:
        offload = CPUOffloadPolicy(pin_memory=accelerator.device.type == "cuda")
    kwargs: dict[str, Any] = {"mesh": _mesh(accelerator), "mp_policy": policy, "offload_policy": offload}

    old = _parameters_by_name(model)
    if options.activation_checkpointing:
        from torch.distributed._composable.checkpoint_activation import checkpoint

        for layer in layers:
            checkpoint(layer)  # composable: no wrapper module, so parameter names do not change
    for layer in layers:
        fully_shard(layer, reshard_after_forward=options.reshard_after_forward, **kwargs)
    # The root's parameters are all-gathered first in backward: resharding them would be gathered again at once.
    fully_shard(model, reshard_after_forward=options.reshard_after_forward and not layers, **kwargs)

    if full_state is not None:
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if meta:
            model.to_empty(device="cpu" if options.offload_params else accelerator.device)
        set_model_state_dict(model, full_state,
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        del full_state
        # Buffers are not sharded; non-persistent ones are in no state dict, so send them all.
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    remember_new_parameters(accelerator, old, _parameters_by_name(model))
    return model


def _parameters_by_name(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters(remove_duplicate=False))


#: Per accelerator: id(old parameter) -> (weak reference to it, its sharded replacement).
_REPLACED: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, nn.Parameter]]] = weakref.WeakKeyDictionary()


def remember_new_parameters(accelerator: Any, old: dict[str, nn.Parameter], new: dict[str, nn.Parameter]) -> None:
    """Record which sharded parameter replaced which original one (``fully_shard`` makes new objects)."""
    table = _REPLACED.setdefault(accelerator, {})
    for name, before in old.items():
        after = new.get(name)
        if after is not None and after is not before:
            table[id(before)] = (weakref.ref(before), after)


def rebind_optimizer(accelerator: Any, optimizer: torch.optim.Optimizer) -> None:
    """Point an optimizer built on the original parameters at the sharded ones, in place."""
    table = _REPLACED.get(accelerator)
    if not table:
        return
    for group in optimizer.param_groups:
        params = group["params"]
        for i, param in enumerate(params):
            entry = table.get(id(param))
            if entry is None or entry[0]() is not param:
                continue
            if optimizer.state.get(param):
                raise ConfigError(
                    f"the optimizer {type(optimizer).__name__} already has state for a parameter of shape "
                    f"{tuple(param.shape)} (it stepped before prepare), which cannot follow the parameter into its "
                    f"shards: call accelerator.prepare before the first optimizer step"
                )
            optimizer.state.pop(param, None)
            params[i] = entry[1]
