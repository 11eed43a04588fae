"""``Accelerator``: HF Accelerate's user-facing API over plait's plugin manager.

The façade never asks which backend is active; each decision is a hook whose
owner answers (see :mod:`plait.hookspecs`). Decisions that run every step are
taken once, at construction or ``prepare``, and their results called directly.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from plait import plugins as plugins_module
from plait._checkpointing import CheckpointingMixin
from plait._collectives import CollectivesMixin
from plait._trackers import TrackersMixin, _split_trackers
from plait.config import Config, resolve_config
from plait.data import DataLoaderShard, skip_first_batches
from plait.environment import ProcessEnvironment
from plait.errors import ConfigError, PluginError
from plait.launcher_env import detect as detect_launch
from plait.optimizer import AcceleratedOptimizer
from plait.precision import Precision
from plait.project import ProjectConfiguration
from plait.scheduler import AcceleratedScheduler
from plait.state import GradientState
from plait.tracking import GeneralTracker
from plait.wrapping import patch_forward, unpatch_forward

_RNG_TYPES = ("torch", "cuda", "mps", "xla", "generator")
_ACCEPTED = "torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.utils.data.DataLoader"


class Accelerator(CheckpointingMixin, CollectivesMixin, TrackersMixin):
    """Runs one training loop unchanged on any hardware the installed plugins support.

    Arguments and their defaults are HF Accelerate's. Each one given here overrides
    the ``PLAIT_*`` environment variables and the config file.

    :param backend: the backend to run (``"single"``, ``"ddp"``, ``"fsdp"``, ...).
    :param backend_options: the backend's options: a dict for its config section, or
        the backend plugin's own options object.
    :param plugins: plugin objects to register on this accelerator only (after the
        backend, so their implementations win).
    :param strict_trackers: raise when a tracker fails instead of warning once.
    """

    def __init__(
        self,
        device_placement: bool = True,
        split_batches: bool = False,
        mixed_precision: str | None = None,
        gradient_accumulation_steps: int = 1,
        cpu: bool = False,
        log_with: str | GeneralTracker | Sequence[str | GeneralTracker] | None = None,
        project_dir: str | None = None,
        project_config: ProjectConfiguration | None = None,
        rng_types: Sequence[str] | None = None,
        step_scheduler_with_optimizer: bool = True,
        even_batches: bool = True,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | object | None = None,
        plugins: Sequence[object] = (),
        strict_trackers: bool = False,
    ) -> None:
        tracker_names, tracker_objects = _split_trackers(log_with)
        arguments: dict[str, Any] = {}
        if backend is not None:
            arguments["backend"] = backend
        if mixed_precision is not None:
            arguments["mixed_precision"] = str(getattr(mixed_precision, "value", mixed_precision))
        if gradient_accumulation_steps != 1:
            arguments["gradient_accumulation_steps"] = gradient_accumulation_steps
        for name, value, default in (
            ("cpu", cpu, False),
            ("split_batches", split_batches, False),
            ("even_batches", even_batches, True),
            ("device_placement", device_placement, True),
            ("step_scheduler_with_optimizer", step_scheduler_with_optimizer, True),
        ):
            if value != default:
                arguments[name] = bool(value)
        if tracker_names:
            arguments["log_with"] = tuple(tracker_names)
        if project_dir is not None:
            arguments["project_dir"] = str(project_dir)
        self.config: Config = resolve_config(arguments, extra_backends=plugins_module.installed_backends())
        self.rng_types = _check_rng_types(rng_types)
        self.project_configuration = project_config if project_config is not None else ProjectConfiguration()
        if self.config.project_dir is not None and self.project_configuration.project_dir is None:
            self.project_configuration.set_directories(self.config.project_dir)

        self.backend: str = self.config.backend or _default_backend()
        self._pm = plugins_module.new_manager()
        self.broken_plugins = plugins_module.load_extensions(self._pm, self.config)
        if self.backend != plugins_module.BUILTIN_BACKEND:
            try:
                plugins_module.load_selected(
                    self._pm, plugins_module.BACKENDS_GROUP, self.backend, self.config.disable_plugins
                )
            except PluginError as exc:
                if self.config.backend is not None:
                    raise
                processes = detect_launch(os.environ).world_size
                raise PluginError(
                    f"this run has {processes} processes and no backend is named, so it needs the "
                    f"{self.backend!r} backend: {exc}"
                ) from None
        launched = detect_launch(os.environ).world_size
        if self.backend == plugins_module.BUILTIN_BACKEND and launched > 1:
            raise ConfigError(
                f"backend 'single' runs one process, but the launcher started {launched}: "
                f"use backend 'ddp' (pip install plait[ddp]) or another multi-process backend"
            )
        for plugin in plugins:
            plugins_module.register(self._pm, plugin)
        hook = self._pm.hook

        section: Any = dict(self.config.section(self.backend))
        if isinstance(backend_options, Mapping):
            section.update(backend_options)
        elif backend_options is not None:
            section = backend_options
        self.backend_options = hook.plait_backend_options(backend=self.backend, options=section)
        self.environment: ProcessEnvironment = hook.plait_process_environment(config=self.config)
        self.device: torch.device = hook.plait_device(config=self.config, environment=self.environment)
        self.gradient_state = GradientState(self.config.gradient_accumulation_steps)
        self.precision = hook.plait_precision(accelerator=self)
        if not isinstance(self.precision, Precision):
            raise PluginError(
                f"plait_precision returned {type(self.precision).__name__!r}: expected a plait.precision.Precision; "
                "make the plugin's precision class a subclass of it"
            )
        self.distributed_type = hook.plait_distributed_type(accelerator=self)

        self._models: list[torch.nn.Module] = []
        #: Per model, whether its ``no_sync`` is a no-op (one process): asked once, then remembered.
        self._no_sync_is_noop: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()
        #: The last ``accumulate`` context whose models all have no-op ``no_sync``: stateless, so reused.
        self._stateless_accumulate: _Accumulate | None = None
        self._optimizers: list[Any] = []
        self._schedulers: list[Any] = []
        self._dataloaders: list[Any] = []
        self._custom_objects: list[Any] = []
        self._trackers_started = False
        self._tracker_warnings: set[str] = set()
        self._strict_trackers = strict_trackers
        self._shut_down = False
        self._tracker_names = self._load_trackers(tracker_names, tracker_objects)
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ properties
    @property
    def plugin_manager(self) -> Any:
        """This accelerator's own :class:`pluggy.PluginManager`."""
        return self._pm

    @property
    def mixed_precision(self) -> str:
        return self.config.mixed_precision

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.gradient_state.num_steps

    @gradient_accumulation_steps.setter
    def gradient_accumulation_steps(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gradient_accumulation_steps={value!r} is not valid: expected a whole number of at least 1")
        self.gradient_state.num_steps = value

    @property
    def sync_gradients(self) -> bool:
        return self.gradient_state.sync_gradients

    @sync_gradients.setter
    def sync_gradients(self, value: bool) -> None:
        self.gradient_state.sync_gradients = value

    @property
    def step(self) -> int:
        """Micro-steps since the last gradient synchronisation."""
        return self.gradient_state.step

    @step.setter
    def step(self, value: int) -> None:
        self.gradient_state.step = value

    @property
    def device_placement(self) -> bool:
        return self.config.device_placement

    @property
    def split_batches(self) -> bool:
        return self.config.split_batches

    @property
    def even_batches(self) -> bool:
        return self.config.even_batches

    @property
    def step_scheduler_with_optimizer(self) -> bool:
        return self.config.step_scheduler_with_optimizer

    @property
    def project_dir(self) -> str | None:
        return self.project_configuration.project_dir

    @property
    def logging_dir(self) -> str | None:
        return self.project_configuration.logging_dir

    @property
    def save_iteration(self) -> int:
        return self.project_configuration.iteration

    @property
    def scaler(self) -> Any:
        """The fp16 gradient scaler, or ``None``."""
        return self.precision.scaler

    def __repr__(self) -> str:
        return (
            f"Accelerator(backend={self.backend!r}, device={self.device}, num_processes={self.num_processes}, "
            f"mixed_precision={self.mixed_precision!r})"
        )

    # ------------------------------------------------------------------ prepare
    def prepare(self, *args: Any, device_placement: Sequence[bool] | None = None) -> Any:
        """Prepare models, optimizers, schedulers and dataloaders, in any mix and order.

        :return: the prepared objects in the order given (one object if one was given).
        """
        if device_placement is not None and len(device_placement) != len(args):
            raise ValueError(
                f"device_placement has {len(device_placement)} entries for {len(args)} objects: give one per object"
            )
        placements = list(device_placement) if device_placement is not None else [None] * len(args)
        kinds = [_kind(obj) for obj in args]
        result: list[Any] = list(args)
        for i, (obj, kind) in enumerate(zip(args, kinds)):
            if kind == "dataloader":
                result[i] = self.prepare_data_loader(obj, device_placement=placements[i])
        for i, (obj, kind) in enumerate(zip(args, kinds)):
            if kind == "model" and not self._is_prepared(obj):
                result[i] = self._place(obj, placements[i])
        joint = self._pm.hook.plait_prepare_jointly(
            accelerator=self,
            models=[r for r, k in zip(result, kinds) if k == "model"],
            optimizers=[a for a, k in zip(args, kinds) if k == "optimizer"],
            schedulers=[a for a, k in zip(args, kinds) if k == "scheduler"],
            dataloaders=[r for r, k in zip(result, kinds) if k == "dataloader"],
        )
        if joint is not None:
            for i, kind in enumerate(kinds):
                if kind != "dataloader" and result[i] in joint:
                    result[i] = joint.get(result[i])
                    self._track(result[i], kind)
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

    def _is_prepared(self, obj: Any) -> bool:
        return any(obj is seen for seen in self._models + self._optimizers + self._schedulers + self._dataloaders)

    def _track(self, obj: Any, kind: str) -> None:
        target = {"model": self._models, "optimizer": self._optimizers, "scheduler": self._schedulers}[kind]
        if not any(obj is seen for seen in target):
            target.append(obj)

    def _place(self, model: torch.nn.Module, device_placement: bool | None) -> torch.nn.Module:
        place = self.device_placement if device_placement is None else device_placement
        return self._pm.hook.plait_place_model(accelerator=self, model=model) if place else model

    def prepare_model(
        self, model: torch.nn.Module, device_placement: bool | None = None, evaluation_mode: bool = False
    ) -> torch.nn.Module:
        """Place and wrap one model (mixed-precision forward, and the backend's wrapper)."""
        _expect(model, "model")
        if self._is_prepared(model):
            return model
        model = self._place(model, device_placement)
        # Wrapping can change what no_sync does for a module already asked (FSDP2 shards in place).
        self._no_sync_is_noop.pop(model, None)
        self._stateless_accumulate = None
        wrapped = self._pm.hook.plait_wrap_model(accelerator=self, model=model, evaluation_mode=evaluation_mode)
        if self.mixed_precision != "no":
            # On the outermost module, as HF Accelerate does: whatever the backend wrapped runs under autocast.
            patch_forward(wrapped, self.precision.wrap_forward)
        self._models.append(wrapped)
        return wrapped

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, device_placement: bool | None = None) -> Any:
        """Wrap one optimizer: it steps and zeroes only when gradients are synchronised."""
        _expect(optimizer, "optimizer")
        if self._is_prepared(optimizer) or isinstance(optimizer, AcceleratedOptimizer):
            return optimizer
        wrapped = self._pm.hook.plait_wrap_optimizer(accelerator=self, optimizer=optimizer)
        self._optimizers.append(wrapped)
        return wrapped

    def prepare_scheduler(self, scheduler: Any) -> Any:
        """Wrap one learning-rate scheduler: it steps only when its optimizer really stepped."""
        _expect(scheduler, "scheduler")
        if self._is_prepared(scheduler) or isinstance(scheduler, AcceleratedScheduler):
            return scheduler
        wrapped = self._pm.hook.plait_wrap_scheduler(accelerator=self, scheduler=scheduler)
        self._schedulers.append(wrapped)
        return wrapped

    def prepare_data_loader(self, data_loader: torch.utils.data.DataLoader, device_placement: bool | None = None) -> Any:
        """Wrap one dataloader: this process's batches, on the device, with a resumable position."""
        _expect(data_loader, "dataloader")
        if self._is_prepared(data_loader) or isinstance(data_loader, DataLoaderShard):
            return data_loader
        wrapped = self._pm.hook.plait_wrap_dataloader(accelerator=self, dataloader=data_loader)
        if device_placement is False and isinstance(wrapped, DataLoaderShard):
            wrapped.place = None
        self._dataloaders.append(wrapped)
        return wrapped

    # ------------------------------------------------------------------ training step
    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Backward of ``loss`` divided by the accumulation steps, scaled when fp16 needs it."""
        steps = self.gradient_state.num_steps
        precision = self.precision
        if steps != 1 and not precision.handles_accumulation:
            loss = loss / steps
        if precision.plain_backward:
            loss.backward(**kwargs) if kwargs else loss.backward()
        else:
            precision.backward(loss, **kwargs)

    def accumulate(self, *models: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        """One micro-step of gradient accumulation: gradients synchronise (and the optimizer steps)
        every ``gradient_accumulation_steps`` micro-steps and on the last batch of the dataloader."""
        context = self._stateless_accumulate
        if context is not None and context._models == models:
            return context
        context = _Accumulate(self, models)
        if context._stateless:
            self._stateless_accumulate = context
        return context

    def _no_sync_context(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any] | None:
        # A model whose no_sync is a no-op (one process) is asked once, not on every micro-step.
        if self._no_sync_is_noop.get(model):
            return None
        context = self.no_sync(model)
        noop = self._no_sync_is_noop[model] = type(context) is contextlib.nullcontext
        return None if noop else context

    def _no_sync_is_known_noop(self, model: torch.nn.Module) -> bool:
        """Whether ``model``'s ``no_sync`` is a no-op, asking the hook only the first time."""
        known = self._no_sync_is_noop.get(model)
        return self._no_sync_context(model) is None if known is None else known

    def no_sync(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """A context in which backward does not synchronise ``model``'s gradients across processes."""
        return self._pm.hook.plait_no_sync(accelerator=self, model=model)

    def autocast(self, autocast_handler: Any = None) -> contextlib.AbstractContextManager[Any]:
        """A context that runs code in the configured mixed precision."""
        kwargs = autocast_handler.to_kwargs() if hasattr(autocast_handler, "to_kwargs") else {}
        return self.precision.autocast(**kwargs)

    def unscale_gradients(self, optimizer: Any = None) -> None:
        """Unscale fp16 gradients of ``optimizer`` (a list, or every prepared optimizer when ``None``)."""
        if optimizer is None:
            optimizers = self._optimizers
        elif isinstance(optimizer, (list, tuple)):
            optimizers = list(optimizer)
        else:
            optimizers = [optimizer]
        for opt in optimizers:
            self.precision.unscale_gradients(getattr(opt, "optimizer", opt))

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2) -> torch.Tensor:
        """Unscale, then clip gradients to ``max_norm``; return the total norm before clipping."""
        self.unscale_gradients()
        return self._pm.hook.plait_clip_grad_norm(
            accelerator=self, parameters=list(parameters), max_norm=max_norm, norm_type=norm_type
        )

    def clip_grad_value_(self, parameters: Any, clip_value: float) -> None:
        """Unscale, then clamp every gradient to ``[-clip_value, clip_value]``."""
        self.unscale_gradients()
        self._pm.hook.plait_clip_grad_value(accelerator=self, parameters=list(parameters), clip_value=clip_value)

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """Whether the last optimizer step was skipped (fp16 found inf or nan gradients)."""
        return any(getattr(opt, "step_was_skipped", False) for opt in self._optimizers)

    def unwrap_model(self, model: torch.nn.Module, keep_fp32_wrapper: bool = True, keep_torch_compile: bool = True) -> Any:
        """The user's module inside a prepared model."""
        if not keep_fp32_wrapper:
            unpatch_forward(model)
        inner: Any = self._pm.hook.plait_unwrap_model(accelerator=self, model=model, keep_fp32_wrapper=keep_fp32_wrapper)
        if not keep_fp32_wrapper:
            unpatch_forward(getattr(inner, "_orig_mod", inner))
        if not keep_torch_compile and hasattr(inner, "_orig_mod"):
            inner = inner._orig_mod
        return inner

    def skip_first_batches(self, dataloader: Any, num_batches: int = 0) -> Any:
        """A dataloader whose next pass starts after ``num_batches`` batches (for resuming mid-epoch)."""
        return skip_first_batches(dataloader, num_batches)

    def free_memory(self, *objects: Any) -> list[None]:
        """Drop the references this accelerator holds, collect garbage, empty device caches."""
        self._models.clear()
        self._stateless_accumulate = None
        self._optimizers.clear()
        self._schedulers.clear()
        self._dataloaders.clear()
        self.gradient_state.step = 0
        objects_freed: list[None] = [None for _ in objects]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return objects_freed

    clear = free_memory

    def end_training(self) -> None:
        """Finish every tracker's run, then tear down the process group."""
        self._finish_trackers()
        if not self._shut_down:
            self._shut_down = True
            self._pm.hook.plait_shutdown(accelerator=self)


class _Accumulate:
    """The context ``accumulate`` returns; a class, because it runs on every micro-step.

    When every model's ``no_sync`` is known to be a no-op (one process) the context
    holds no state while entered, and the accelerator reuses it from step to step.
    """

    __slots__ = ("_accelerator", "_models", "_stack", "_state", "_stateless")

    def __init__(self, accelerator: Accelerator, models: tuple[torch.nn.Module, ...]) -> None:
        self._accelerator = accelerator
        self._state = accelerator.gradient_state
        self._models = models
        self._stack: contextlib.ExitStack | None = None
        # Known now (asked once per model and accelerator, then remembered) rather than at the first
        # micro-step that skips synchronisation: until then, every step would build a new context.
        noop = accelerator._no_sync_is_known_noop
        self._stateless = all(noop(model) for model in models)

    def __enter__(self) -> None:
        # Decide whether the micro-step about to run synchronises: on every k-th micro-step, and on
        # the dataloader's last batch (which also restarts the count).
        state = self._state
        if state.end_of_dataloader:
            state.step = 0
            state.sync_gradients = True
            return
        step = state.step = state.step + 1
        if step % state.num_steps == 0:
            state.sync_gradients = True
            return
        state.sync_gradients = False
        if self._stateless:
            return
        no_sync = self._accelerator._no_sync_context
        for model in self._models:
            context = no_sync(model)
            if context is not None:
                if self._stack is None:
                    self._stack = contextlib.ExitStack()
                self._stack.enter_context(context)

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool | None:
        stack = self._stack
        if stack is None:
            return None
        self._stack = None
        return stack.__exit__(kind, error, traceback)


def _default_backend() -> str:
    """``ddp`` when a launcher started several processes, else the built-in single-process backend."""
    return "ddp" if detect_launch(os.environ).world_size > 1 else plugins_module.BUILTIN_BACKEND


def _shutdown_at_exit(reference: weakref.ref[Accelerator]) -> None:
    accelerator = reference()
    if accelerator is not None and not accelerator._shut_down:
        accelerator._shut_down = True
        accelerator._pm.hook.plait_shutdown(accelerator=accelerator)


def _check_rng_types(rng_types: Sequence[str] | None) -> list[str]:
    types = ["generator"] if rng_types is None else [str(getattr(t, "value", t)) for t in rng_types]
    for t in types:
        if t not in _RNG_TYPES:
            raise ValueError(f"rng_types contains {t!r}: expected some of {', '.join(_RNG_TYPES)}")
    return types


def _kind(obj: Any) -> str:
    if isinstance(obj, torch.nn.Module):
        return "model"
    if isinstance(obj, torch.optim.Optimizer):
        return "optimizer"
    if isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau,
                        AcceleratedScheduler)):
        return "scheduler"
    if isinstance(obj, torch.utils.data.DataLoader):
        return "dataloader"
    raise TypeError(
        f"prepare() got an object of type {type(obj).__module__}.{type(obj).__qualname__}: "
        f"expected {_ACCEPTED} (or a list of them passed one by one)"
    )


def _expect(obj: Any, kind: str) -> None:
    found = _kind(obj)
    if found != kind:
        raise TypeError(f"expected a {kind}, got {type(obj).__qualname__} (a {found}); use prepare_{found}")
