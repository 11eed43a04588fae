"""``Accelerator``: HF Accelerate's user-facing API, composed of small parts that each own one concern.

The parts are built once, in ``__init__``: :attr:`~Accelerator.process` (this process's
place in the job, barriers), :attr:`~Accelerator.collectives` (handed over by a hook),
:attr:`~Accelerator.precision`, :attr:`~Accelerator.accumulation`,
:attr:`~Accelerator.preparer` with the registry :attr:`~Accelerator.prepared`,
:attr:`~Accelerator.checkpointer` and :attr:`~Accelerator.trackers`. The methods are
delegates to them; the façade never asks which backend is active (ARCHITECTURE.md).
"""

from __future__ import annotations

import atexit
import os
import weakref
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import torch

from plait.checkpoint.checkpointer import Checkpointer
from plait.collectives import Collectives
from plait.config import ARGUMENT, Config, resolve_config
from plait.config.arguments import config_arguments, recording_given_arguments
from plait.delegation import attribute, delegate
from plait.plugins import catalog, discovery
from plait.plugins import manager as plugin_manager
from plait.plugins.hooks import Hooks
from plait.precision import Precision
from plait.process.environment import ProcessEnvironment
from plait.process.launch_variables import detect as detect_launch
from plait.process.process_state import ProcessState
from plait.project import ProjectConfiguration
from plait.random import check_rng_types
from plait.tracking.trackers import Trackers
from plait.training import Accumulation, GradientState, PreparedRegistry, Preparer

if TYPE_CHECKING:
    from plait.tracking import GeneralTracker
    from plait.utils.dataclasses import (
        DataLoaderConfiguration,
        DeepSpeedPlugin,
        FullyShardedDataParallelPlugin,
        GradientAccumulationPlugin,
        KwargsHandler,
        ProfileKwargs,
        TorchDynamoPlugin,
    )


class Accelerator:
    """Runs one training loop unchanged on any hardware the installed plugins support.

    Arguments and their defaults are HF Accelerate's; each one passed overrides ``PLAIT_*`` and the config file.

    :param backend: the backend to run (``"single"``, ``"ddp"``, ``"fsdp"``, ...).
    :param backend_options: the backend's options: a dict for its config section, or the backend
        plugin's own options object.
    :param plugins: plugin objects to register on this accelerator only (after the backend, so they win).
    :param strict_trackers: raise when a tracker fails instead of warning once.
    """

    _given: dict[str, Any]

    @recording_given_arguments
    def __init__(
        self,
        device_placement: bool = True,
        split_batches: bool = False,
        mixed_precision: str | None = None,
        gradient_accumulation_steps: int = 1,
        cpu: bool = False,
        dataloader_config: DataLoaderConfiguration | None = None,
        deepspeed_plugin: DeepSpeedPlugin | dict[str, DeepSpeedPlugin] | None = None,
        fsdp_plugin: FullyShardedDataParallelPlugin | None = None,
        torch_tp_plugin: Any = None,
        megatron_lm_plugin: Any = None,
        rng_types: Sequence[str] | None = None,
        log_with: str | GeneralTracker | Sequence[str | GeneralTracker] | None = None,
        project_dir: str | os.PathLike[str] | None = None,
        project_config: ProjectConfiguration | None = None,
        gradient_accumulation_plugin: GradientAccumulationPlugin | None = None,
        step_scheduler_with_optimizer: bool = True,
        kwargs_handlers: Sequence[KwargsHandler] | None = None,
        dynamo_backend: str | None = None,
        dynamo_plugin: TorchDynamoPlugin | None = None,
        deepspeed_plugins: DeepSpeedPlugin | dict[str, DeepSpeedPlugin] | None = None,
        parallelism_config: Any = None,
        even_batches: bool = True,
        backend: str | None = None,
        backend_options: Mapping[str, Any] | object | None = None,
        plugins: Sequence[object] = (),
        strict_trackers: bool = False,
    ) -> None:
        from plait.config.objects import read_objects
        from plait.tracking.trackers import split_trackers

        objects = read_objects(self._given)
        h = objects.handlers  # HF Accelerate's attributes for the kwargs_handlers passed (None when not passed)
        self.ddp_handler, self.scaler_handler, self.init_handler = h["ddp_handler"], h["scaler_handler"], h["init_handler"]
        self.autocast_handler, self.profile_handler = h["autocast_handler"], h["profile_handler"]
        arguments = objects.with_arguments(config_arguments(self._given, split_trackers(log_with)[0]))
        self.config: Config = resolve_config(arguments, extra_backends=discovery.installed_backends())
        self.rng_types = check_rng_types(rng_types)
        self.project_configuration = project_config if project_config is not None else ProjectConfiguration()
        if self.config.project_dir is not None and self.project_configuration.project_dir is None:
            self.project_configuration.set_directories(self.config.project_dir)

        launched = detect_launch(os.environ).world_size
        # The processes the launcher started count as much as an argument: a `single` from the file gives way.
        self.backend: str = catalog.choose_backend(self.config, launched, "the launcher", ARGUMENT)
        objects.check_backend(self.backend)
        pm = self.plugin_manager = plugin_manager.new_manager()
        self.hooks = Hooks(pm)
        self.broken_plugins = plugin_manager.load_run_plugins(pm, self.config, self.backend, launched, plugins)
        self.plugins = tuple(plugins)

        hooks = self.hooks
        self.backend_options: Any = hooks.backend_options(self.backend, self.config.options(self.backend, backend_options))
        environment = hooks.process_environment(self.config)
        device = hooks.device(self.config, environment)
        self.collectives: Collectives = hooks.collectives(self.config, environment, device)
        self.process = ProcessState(environment, device, self.collectives)
        self.gradient_state = GradientState(self.config.gradient_accumulation_steps, objects.accumulation)
        self.dataloader_config, self.dynamo_plugin, self.fsdp_plugin, self.deepspeed_plugins = objects.settled(
            self.config, self.backend, self.backend_options)
        self.precision: Precision = hooks.precision(self)
        self.distributed_type = hooks.distributed_type(self)
        self.prepared = PreparedRegistry()
        self.accumulation = Accumulation(self.gradient_state, hooks.sync_control(self))
        self.preparer = Preparer(self)
        self.checkpointer = Checkpointer(self)
        self.trackers = Trackers(self, log_with, strict_trackers)
        self._shut_down = False
        from plait.state import share_accelerator

        self.state = share_accelerator(self)  # HF Accelerate's AcceleratorState, a view of this accelerator
        atexit.register(_shutdown_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ the process part
    device: attribute[torch.device] = attribute("process")
    environment: attribute[ProcessEnvironment] = attribute("process")
    process_index: attribute[int] = attribute("process")
    local_process_index: attribute[int] = attribute("process")
    num_processes: attribute[int] = attribute("process")
    is_main_process: attribute[bool] = attribute("process")
    is_local_main_process: attribute[bool] = attribute("process")
    is_last_process: attribute[bool] = attribute("process")
    use_distributed: attribute[bool] = attribute("process")
    print = delegate("process", ProcessState.print)
    wait_for_everyone = delegate("process", ProcessState.wait_for_everyone)
    main_process_first = delegate("process", ProcessState.main_process_first)
    local_main_process_first = delegate("process", ProcessState.local_main_process_first)
    split_between_processes = delegate("process", ProcessState.split_between_processes)
    on_main_process = delegate("process", ProcessState.on_main_process)
    on_local_main_process = delegate("process", ProcessState.on_local_main_process)
    on_last_process = delegate("process", ProcessState.on_last_process)
    on_process = delegate("process", ProcessState.on_process)
    on_local_process = delegate("process", ProcessState.on_local_process)

    # ------------------------------------------------------------------ collectives
    gather = delegate("collectives", Collectives.gather)
    gather_object = delegate("collectives", Collectives.gather_object)
    reduce = delegate("collectives", Collectives.reduce)
    broadcast = delegate("collectives", Collectives.broadcast)
    broadcast_object_list = delegate("collectives", Collectives.broadcast_object_list)
    pad_across_processes = delegate("collectives", Collectives.pad_across_processes)

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """Gather for metric computation: the samples padding added on the last batch are dropped."""
        return self.collectives.gather_for_metrics(input_data, use_gather_object, self.gradient_state)

    # ------------------------------------------------------------------ preparation
    prepare = delegate("preparer", Preparer.prepare)
    prepare_model = delegate("preparer", Preparer.prepare_model)
    prepare_optimizer = delegate("preparer", Preparer.prepare_optimizer)
    prepare_scheduler = delegate("preparer", Preparer.prepare_scheduler)
    prepare_data_loader = delegate("preparer", Preparer.prepare_data_loader)
    unwrap_model = delegate("preparer", Preparer.unwrap_model)
    free_memory = delegate("preparer", Preparer.free_memory)
    clear = free_memory
    init_module = delegate("preparer", Preparer.init_module)
    skip_first_batches = delegate("preparer", Preparer.skip_first_batches)
    join_uneven_inputs = delegate("preparer", Preparer.join_uneven_inputs)

    # ------------------------------------------------------------------ the training step
    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Backward of ``loss`` divided by the accumulation steps, scaled when fp16 needs it."""
        steps, precision, collectives = self.gradient_state.num_steps, self.precision, self.collectives
        loss = loss / steps if steps != 1 and not precision.handles_accumulation else loss
        try:  # a timed-out gradient synchronisation names the processes it waited for; debug compares them first
            collectives.check_operation("backward") if collectives.debug else None
            loss.backward() if precision.plain_backward and not kwargs else precision.backward(loss, **kwargs)
        except RuntimeError as error:
            collectives.raise_if_timed_out(error, "backward")
            raise

    def accumulate(self, *models: torch.nn.Module) -> AbstractContextManager[None]:
        """One micro-step of gradient accumulation: gradients synchronise (and the optimizer steps) every
        ``gradient_accumulation_steps`` micro-steps and on the dataloader's last batch."""
        return self.accumulation.context(models)

    no_sync = delegate("accumulation", Accumulation.no_sync)

    def autocast(self, autocast_handler: Any = None) -> AbstractContextManager[Any]:
        """A context that runs code in the configured mixed precision."""
        kwargs = autocast_handler.to_kwargs() if hasattr(autocast_handler, "to_kwargs") else {}
        return self.precision.autocast(**kwargs)

    def unscale_gradients(self, optimizer: Any = None) -> None:
        """Unscale fp16 gradients of ``optimizer`` (a list, or every prepared optimizer when ``None``)."""
        optimizers = self.prepared.optimizers if optimizer is None else optimizer
        for opt in optimizers if isinstance(optimizers, (list, tuple)) else [optimizers]:
            self.precision.unscale_gradients(getattr(opt, "optimizer", opt))

    def clip_grad_norm_(self, parameters: Any, max_norm: float, norm_type: float = 2) -> torch.Tensor:
        """Unscale, then clip gradients to ``max_norm``; return the total norm before clipping."""
        self.unscale_gradients()
        return self.hooks.clip_grad_norm(self, list(parameters), max_norm, norm_type)

    def clip_grad_value_(self, parameters: Any, clip_value: float) -> None:
        """Unscale, then clamp every gradient to ``[-clip_value, clip_value]``."""
        self.unscale_gradients()
        self.hooks.clip_grad_value(self, list(parameters), clip_value)

    optimizer_step_was_skipped: attribute[bool] = attribute("prepared", doc="Whether the last optimizer step was skipped.")
    trigger_sync_in_backward = delegate("accumulation", Accumulation.trigger_sync_in_backward)
    set_trigger = delegate("process", ProcessState.set_trigger)
    check_trigger = delegate("process", ProcessState.check_trigger)

    # ------------------------------------------------------------------ checkpoints and trackers
    save_state = delegate("checkpointer", Checkpointer.save_state)
    load_state = delegate("checkpointer", Checkpointer.load_state)
    resume = delegate("checkpointer", Checkpointer.resume)
    save_model = delegate("checkpointer", Checkpointer.save_model)
    save = delegate("checkpointer", Checkpointer.save)
    get_state_dict = delegate("checkpointer", Checkpointer.get_state_dict)
    register_for_checkpointing = delegate("checkpointer", Checkpointer.register_for_checkpointing)
    register_save_state_pre_hook = delegate("checkpointer", Checkpointer.register_save_state_pre_hook)
    register_load_state_pre_hook = delegate("checkpointer", Checkpointer.register_load_state_pre_hook)
    init_trackers = delegate("trackers", Trackers.init_trackers)
    log = delegate("trackers", Trackers.log)
    get_tracker = delegate("trackers", Trackers.get_tracker)

    def profile(self, profile_handler: ProfileKwargs | None = None) -> AbstractContextManager[Any]:
        """A ``torch.profiler`` context (``ProfileKwargs``: the argument, else the one in ``kwargs_handlers``)."""
        from plait.profiling import profile

        return profile(self, profile_handler or self.profile_handler)

    def end_training(self) -> None:
        """Finish every tracker's run, then tear down the process group."""
        self.trackers.finish()
        _shutdown(self)

    # ------------------------------------------------------------------ settings (HF Accelerate's names)
    mixed_precision: attribute[str] = attribute("config")
    device_placement: attribute[bool] = attribute("config")
    split_batches: attribute[bool] = attribute("config")
    even_batches: attribute[bool] = attribute("config")
    step_scheduler_with_optimizer: attribute[bool] = attribute("config")
    dispatch_batches: attribute[bool | None] = attribute("dataloader_config")
    non_blocking: attribute[bool] = attribute("dataloader_config")
    use_seedable_sampler: attribute[bool] = attribute("dataloader_config")
    use_stateful_dataloader: attribute[bool] = attribute("dataloader_config")
    project_dir: attribute[str | None] = attribute("project_configuration")
    logging_dir: attribute[str | None] = attribute("project_configuration")
    save_iteration: attribute[int] = attribute("project_configuration", "iteration")
    scaler: attribute[Any] = attribute("precision", doc="The fp16 gradient scaler, or ``None``.")

    gradient_accumulation_steps: attribute[int] = attribute("gradient_state", "accumulation_steps", writable=True)
    sync_gradients: attribute[bool] = attribute("gradient_state", writable=True)
    step: attribute[int] = attribute("gradient_state", writable=True, doc="Micro-steps since the last synchronisation.")

    @property
    def deepspeed_plugin(self) -> DeepSpeedPlugin | None:
        """The active one of ``deepspeed_plugins`` (HF Accelerate's), or ``None``."""
        from plait.utils.backend_plugins import active_deepspeed_plugin

        return active_deepspeed_plugin(self)

    __getstate__ = plugin_manager.accelerator_state  # an Accelerator can be pickled: its plugins are
    __setstate__ = plugin_manager.restore_accelerator  # loaded again when it is unpickled

    def __repr__(self) -> str:
        return (f"Accelerator(backend={self.backend!r}, device={self.device}, num_processes={self.num_processes}, "
                f"mixed_precision={self.mixed_precision!r})")


def _shutdown(accelerator: Accelerator) -> None:
    if not accelerator._shut_down:
        accelerator._shut_down = True
        accelerator.hooks.shutdown(accelerator)


def _shutdown_at_exit(reference: weakref.ref[Accelerator]) -> None:
    accelerator = reference()
    if accelerator is not None:
        _shutdown(accelerator)
