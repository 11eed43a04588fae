"""``prepare``: placing and wrapping models, optimizers, schedulers and dataloaders through the wrapping hooks."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, cast

import torch

from plait.training.forward_patch import patch_forward, unpatch_forward
from plait.training.optimizer import AcceleratedOptimizer
from plait.training.scheduler import AcceleratedScheduler

if TYPE_CHECKING:
    from plait.accelerator import Accelerator

_ACCEPTED = "torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.utils.data.DataLoader"


class Preparer:
    """The Accelerator's preparation part: every object goes through its backend's wrapping hooks once,
    and is recorded in ``accelerator.prepared``."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        # A timed-out or mismatched collective says where each process's prepared dataloaders stand.
        accelerator.collectives.progress = accelerator.prepared.describe_dataloaders

    def prepare(self, *args: Any, device_placement: Sequence[bool] | None = None) -> Any:
        """Prepare models, optimizers, schedulers and dataloaders, in any mix and order.

        :return: the prepared objects in the order given (one object if one was given).
        """
        accelerator = self.accelerator
        if device_placement is not None and len(device_placement) != len(args):
            raise ValueError(
                f"device_placement has {len(device_placement)} entries for {len(args)} objects: give one per object"
            )
        placements = list(device_placement) if device_placement is not None else [None] * len(args)
        # As HF Accelerate: what prepare does not know (None, a tokenizer, a loss) comes back as it is.
        kinds = [kind_of(obj, strict=False) for obj in args]
        result: list[Any] = list(args)
        for i, (obj, kind) in enumerate(zip(args, kinds)):
            if kind == "dataloader":
                result[i] = self.prepare_data_loader(obj, device_placement=placements[i])
        for i, (obj, kind) in enumerate(zip(args, kinds)):
            if kind == "model" and obj not in accelerator.prepared:
                result[i] = self._place(obj, placements[i])
        joint = accelerator.hooks.prepare_jointly(
            accelerator,
            models=[r for r, k in zip(result, kinds) if k == "model"],
            optimizers=[a for a, k in zip(args, kinds) if k == "optimizer"],
            schedulers=[a for a, k in zip(args, kinds) if k == "scheduler"],
            dataloaders=[r for r, k in zip(result, kinds) if k == "dataloader"],
        )
        if joint is not None:
            for i, kind in enumerate(kinds):
                if kind not in ("dataloader", "other") and result[i] in joint:
                    result[i] = joint.get(result[i])
                    accelerator.prepared.add(result[i], kind)
            return result[0] if len(result) == 1 else tuple(result)
        for i, kind in enumerate(kinds):
            if kind == "model":
                result[i] = self.prepare_model(result[i], device_placement=False)
        for i, kind in enumerate(kinds):
            if kind == "optimizer":
                result[i] = self.prepare_optimizer(result[i])
        for i, kind in enumerate(kinds):
            if kind == "scheduler":
                result[i] = self.prepare_scheduler(result[i])
        return result[0] if len(result) == 1 else tuple(result)

    def _place(self, model: torch.nn.Module, device_placement: bool | None) -> torch.nn.Module:
        accelerator = self.accelerator
        place = accelerator.config.device_placement if device_placement is None else device_placement
        return accelerator.hooks.place_model(accelerator, model) if place else model

    def prepare_model(
        self, model: torch.nn.Module, device_placement: bool | None = None, evaluation_mode: bool = False
    ) -> torch.nn.Module:
        """Place and wrap one model (mixed-precision forward, and the backend's wrapper)."""
        accelerator = self.accelerator
        expect(model, "model")
        if model in accelerator.prepared:
            return model
        model = self._place(model, device_placement)
        accelerator.accumulation.forget(model)  # wrapping can change what its synchronisation does
        wrapped = accelerator.hooks.wrap_model(accelerator, model, evaluation_mode)
        if accelerator.config.mixed_precision != "no":
            # On the outermost module, as HF Accelerate does: whatever the backend wrapped runs under autocast.
            patch_forward(wrapped, accelerator.precision.wrap_forward)
        dynamo = accelerator.dynamo_plugin
        if str(dynamo.backend.value) != "NO" and not hasattr(wrapped, "_orig_mod"):
            wrapped = cast("torch.nn.Module", torch.compile(wrapped, **dynamo.to_kwargs()))  # after wrapping, as HF Accelerate
        accelerator.prepared.add(wrapped, "model")
        return wrapped

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, device_placement: bool | None = None) -> Any:
        """Wrap one optimizer: it steps and zeroes only when gradients are synchronised."""
        return self._wrap_once(optimizer, "optimizer", AcceleratedOptimizer, self.accelerator.hooks.wrap_optimizer)

    def prepare_scheduler(self, scheduler: Any) -> Any:
        """Wrap one learning-rate scheduler: it steps only when its optimizer really stepped."""
        return self._wrap_once(scheduler, "scheduler", AcceleratedScheduler, self.accelerator.hooks.wrap_scheduler)

    def _wrap_once(self, obj: Any, kind: str, prepared_type: type, wrap: Callable[[Any, Any], Any]) -> Any:
        accelerator = self.accelerator
        expect(obj, kind)
        if obj in accelerator.prepared or isinstance(obj, prepared_type):
            return obj
        wrapped = wrap(accelerator, obj)
        accelerator.prepared.add(wrapped, kind)
        return wrapped

    def prepare_data_loader(self, data_loader: torch.utils.data.DataLoader[Any], device_placement: bool | None = None) -> Any:
        """Wrap one dataloader: this process's batches, on the device, with a resumable position."""
        from plait.data.loader import DataLoaderShard

        accelerator = self.accelerator
        expect(data_loader, "dataloader")
        if data_loader in accelerator.prepared or isinstance(data_loader, DataLoaderShard):
            return data_loader
        wrapped = accelerator.hooks.wrap_dataloader(accelerator, data_loader)
        if device_placement is False and isinstance(wrapped, DataLoaderShard):
            wrapped.place = None
        accelerator.prepared.add(wrapped, "dataloader")
        return wrapped

    def unwrap_model(self, model: torch.nn.Module, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True) -> Any:
        """The user's module inside a prepared model: without the backend's wrapper, ``torch.nn.DataParallel``,
        and (``keep_torch_compile=False``) ``torch.compile``'s. A compiled model kept compiled comes back as a
        compiled module of the unwrapped one (parameter names without ``_orig_mod.`` need ``False``)."""
        compiled = model if hasattr(model, "_orig_mod") else None
        inner: Any = model._orig_mod if compiled is not None else model
        if not keep_fp32_wrapper:
            unpatch_forward(inner)
        inner = self.accelerator.hooks.unwrap_model(self.accelerator, inner, keep_fp32_wrapper)
        while isinstance(inner, torch.nn.DataParallel) or hasattr(inner, "_orig_mod"):
            inner = inner.module if isinstance(inner, torch.nn.DataParallel) else inner._orig_mod
        if not keep_fp32_wrapper:
            unpatch_forward(inner)
        if compiled is not None and keep_torch_compile:
            return inner if inner is compiled._orig_mod else _compiled_like(compiled, inner)
        return inner

    def init_module(self, empty_init: bool | None = None) -> AbstractContextManager[Any]:
        """A context to build models in, the way the backend wants them built (on the device; partitioned
        or on the meta device where the backend shards them); ``empty_init=True`` skips initialisation."""
        return self.accelerator.hooks.init_module(self.accelerator, empty_init)

    def skip_first_batches(self, dataloader: Any, num_batches: int = 0) -> Any:
        """A dataloader whose next pass starts after ``num_batches`` batches (for resuming mid-epoch)."""
        from plait.data.skipping import skip_first_batches

        return skip_first_batches(dataloader, num_batches)

    def join_uneven_inputs(self, joinables: list[Any], even_batches: bool | None = None) -> AbstractContextManager[Any]:
        """HF Accelerate's ``join_uneven_inputs``: train on uneven inputs across processes with
        ``torch.distributed.algorithms.Join`` (DistributedDataParallel models keep shadowing the
        collectives of processes that ran out of batches). ``even_batches`` overrides the prepared
        dataloaders' for the duration."""
        from plait.data.joining import join_uneven_inputs

        return join_uneven_inputs(self.accelerator, joinables, even_batches)

    def free_memory(self, *objects: Any) -> list[None]:
        """Drop the references this accelerator holds, collect garbage, empty device caches."""
        accelerator = self.accelerator
        accelerator.prepared.clear()
        accelerator.accumulation.clear()
        accelerator.gradient_state.step = 0
        objects_freed: list[None] = [None for _ in objects]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return objects_freed


def _compiled_like(compiled: Any, module: torch.nn.Module) -> Any:
    """``module`` compiled as ``compiled`` was (same backend and options; compiling is lazy, so this is cheap)."""
    import torch._dynamo.eval_frame as eval_frame

    return eval_frame.OptimizedModule(module, compiled.dynamo_ctx)


def kind_of(obj: Any, strict: bool = True) -> str:
    """``"model"``, ``"optimizer"``, ``"scheduler"`` or ``"dataloader"``; for anything else a ``TypeError``,
    or ``"other"`` when not ``strict``."""
    if isinstance(obj, torch.nn.Module):
        return "model"
    from plait.utils.backend_plugins import DummyOptim, DummyScheduler

    if isinstance(obj, (torch.optim.Optimizer, DummyOptim)):
        return "optimizer"
    if isinstance(obj, DummyScheduler):
        return "scheduler"
    if isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau,
                        AcceleratedScheduler)):
        return "scheduler"
    if isinstance(obj, torch.utils.data.DataLoader):
        return "dataloader"
    if not strict:
        return "other"
    raise TypeError(
        f"prepare() got an object of type {type(obj).__module__}.{type(obj).__qualname__}: "
        f"expected {_ACCEPTED} (or a list of them passed one by one)"
    )


def expect(obj: Any, kind: str) -> None:
    """Refuse ``obj`` unless it is a ``kind``, naming the ``prepare_*`` method that takes it."""
    found = kind_of(obj)
    if found != kind:
        raise TypeError(f"expected a {kind}, got {type(obj).__qualname__} (a {found}); use prepare_{found}")
