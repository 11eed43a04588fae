"""Hook specifications: the plugin author's manual.

A plugin is a module, class or object whose functions are marked with
:data:`plait.hookimpl` and named like the specifications below. Every
:class:`~plait.Accelerator` owns its own :class:`pluggy.PluginManager`; the
built-in defaults (backend ``single``) are registered first, then plugins from
the ``plait.plugins`` entry-point group, then the one selected backend from
``plait.backends`` and the trackers named in ``log_with`` from
``plait.trackers``. pluggy calls the most recently registered implementation
first, so a backend's implementation wins a *firstresult* hook and the
defaults are the fallback. Decorate with ``@hookimpl(tryfirst=True)`` to run
before a backend (a cross-cutting plugin), ``trylast=True`` to run after it.

Two kinds of hook:

* **firstresult** hooks are decisions with one owner: pluggy stops at the first
  implementation that returns something other than ``None``. Return ``None`` to
  decline and let the next implementation (in the end core's default) decide.
* **fan-out** hooks are notifications: every implementation is called and the
  results are collected in a list.

A plugin that acts around another implementation (records, then lets the backend
decide) is a new-style wrapper, ``@hookimpl(wrapper=True)``: a generator whose
``yield`` returns what the implementations after it returned::

    @hookimpl(wrapper=True)
    def plait_wrap_optimizer(accelerator, optimizer):
        rebind(optimizer)      # act first...
        return (yield)         # ...then let the next implementation wrap it

Only the selected backend is registered on an Accelerator, so a backend's hooks
never need to ask which backend runs. The hooks of the ``cli`` group are the
exception: the command line registers every installed plugin, so
:func:`plait_backend_options` and :func:`plait_config_questions` answer only for
their own backend's name.

Implementations may accept any subset of a spec's arguments, by name. Heavy
libraries (torch, deepspeed, torch_xla, wandb...) must be imported inside hook
bodies, never at module top: ``plait plugins`` imports your module to list its
hooks and must stay fast.

Hooks called once per Accelerator or per ``prepare`` return objects (the
:class:`~plait.collectives.Collectives`, the
:class:`~plait.precision.Precision`, the
:class:`~plait.training.GradientSyncControl`, a wrapped model, a batch placer)
whose methods then run on the hot path without plugin dispatch: a pluggy call
costs about 2 µs, which is too much to pay several times per training step.
Such an object is an explicit capability: core's default class does the plain
thing, and a backend returns a subclass that overrides what it owns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

# The reader is a light module (torch loads with its first read); imported here so that the specs' annotations resolve.
from plait.checkpoint.reader import CheckpointReader
from plait.plugins.markers import hookspec

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointWriter
    from plait.collectives import Collectives
    from plait.config import Config
    from plait.precision import Precision
    from plait.process import ProcessEnvironment
    from plait.training import GradientSyncControl, PreparedObjects


# --------------------------------------------------------------------------- #
# environment
# --------------------------------------------------------------------------- #


@hookspec(firstresult=True)
def plait_backend_options(backend: str, options: Mapping[str, Any] | object) -> object | None:
    """Validate the config section of ``backend`` and return the backend's options object.

    Called once per :class:`~plait.Accelerator`, for the selected backend only, with
    the merged section (YAML file, ``PLAIT_<SECTION>`` variable, then the
    ``backend_options`` argument). A backend answers only for its own name and
    raises :class:`plait.errors.ConfigError` naming an unknown or invalid key.
    When the user passed an options object instead of a dict
    (``Accelerator(backend_options=FsdpOptions(...))``), ``options`` is that object:
    return it if it is yours. The returned object is available to every hook as
    ``accelerator.backend_options``.

    :param backend: the selected backend's name, e.g. ``"fsdp"``.
    :param options: the raw section, a mapping of option names to values, or the
        options object given as ``backend_options``.
    :return: the backend's own options object, or ``None`` to decline.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_process_environment(config: Config) -> ProcessEnvironment | None:
    """Detect this process's place in the job and start the process group if there is one.

    :param config: the resolved configuration.
    :return: a :class:`~plait.process.ProcessEnvironment` (rank, world size,
        local rank, local world size).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_device(config: Config, environment: ProcessEnvironment) -> torch.device | None:
    """Choose this process's device.

    Core's default: ``cuda:LOCAL_RANK`` when CUDA is available, else MPS, else CPU;
    ``config.cpu`` forces CPU.

    :param config: the resolved configuration.
    :param environment: this process's place in the job.
    :return: the :class:`torch.device` every model and batch is moved to.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_collectives(config: Config, environment: ProcessEnvironment, device: torch.device) -> Collectives | None:
    """Return the object that runs every collective of the run: gathers, reductions, broadcasts, barriers.

    Called once per accelerator, after :func:`plait_device`. Every collective method of
    the Accelerator (``gather``, ``gather_object``, ``gather_for_metrics``, ``reduce``,
    ``broadcast``, ``broadcast_object_list``, ``pad_across_processes``,
    ``wait_for_everyone``) and of core's parts (checkpoints, dataloader dispatch) then
    calls this object directly. Core's default is :class:`plait.collectives.Collectives`
    for one process and :class:`plait.collectives.TorchCollectives` (``torch.distributed``)
    for more; a backend with collectives of its own (XLA) returns a subclass that
    overrides the six primitives (``all_gather``, ``all_reduce``, ``broadcast_tensor``,
    ``gather_objects``, ``broadcast_objects``, ``barrier``) or any structured method.

    :param config: the resolved configuration (``config.debug`` asks for shape and operation checks).
    :param environment: this process's place in the job.
    :param device: this process's device.
    :return: a :class:`~plait.collectives.Collectives`.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_distributed_type(accelerator: Accelerator) -> str | None:
    """Name the kind of run, as HF Accelerate's ``DistributedType`` does.

    :param accelerator: the accelerator asking.
    :return: a :class:`plait.process.DistributedType` member (a ``str``),
        e.g. ``DistributedType.NO`` for one process.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_shutdown(accelerator: Accelerator) -> bool | None:
    """Tear down what :func:`plait_process_environment` started (the process group).

    Called by ``end_training`` and at interpreter exit, at most once.

    :param accelerator: the accelerator ending.
    :return: ``True`` once handled.

    Stops at the first non-None result.
    """


# --------------------------------------------------------------------------- #
# placement
# --------------------------------------------------------------------------- #


@hookspec(firstresult=True)
def plait_place_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module | None:
    """Move ``model`` to ``accelerator.device`` before it is wrapped.

    Called by ``prepare_model`` when device placement is on. Backends that place
    parameters themselves (sharded or on-the-fly initialisation) return the model
    untouched.

    :param accelerator: the accelerator preparing the model.
    :param model: the user's model.
    :return: the placed model (usually the same object).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_batch_placer(accelerator: Accelerator, dataloader: Any) -> Callable[[Any], Any] | None:
    """Return the function that moves each batch of ``dataloader`` to the device.

    Called once per prepared dataloader; the function it returns runs on every
    batch, so it should be cheap. It receives nested lists, tuples, dicts and
    tensors and returns the same structure.

    :param accelerator: the accelerator preparing the dataloader.
    :param dataloader: the user's dataloader.
    :return: a function ``batch -> batch``; :func:`plait.data.unplaced` when batches
        stay where the dataloader made them (the prepared loader then calls nothing).

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_init_module(accelerator: Accelerator, empty_init: bool | None) -> AbstractContextManager[Any] | None:
    """Return the context in which ``accelerator.init_module()`` builds models.

    A user script builds its model inside ``with accelerator.init_module():`` and
    never imports a backend: a sharding backend builds it the way it shards it
    (partitioned as each layer is made, or on the meta device on the processes that
    receive their weights from the main process at ``prepare``). Core's default builds
    parameters directly on ``accelerator.device`` (when device placement is on), and
    with ``empty_init`` skips their initialisation (for weights loaded right after).

    :param accelerator: the accelerator the model is built for.
    :param empty_init: ``True`` to leave parameters uninitialised, ``False`` to
        initialise them, ``None`` to let the backend choose.
    :return: a context manager.

    Stops at the first non-None result.
    """


# --------------------------------------------------------------------------- #
# wrapping
# --------------------------------------------------------------------------- #


@hookspec(firstresult=True)
def plait_prepare_jointly(
    accelerator: Accelerator,
    models: Sequence[torch.nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    dataloaders: Sequence[Any],
) -> PreparedObjects | None:
    """Wrap models, optimizers and schedulers together, for engines that need all at once.

    DeepSpeed's ``deepspeed.initialize`` takes the model, optimizer and scheduler in
    one call; a backend like that implements this hook. Called by ``prepare`` with
    every object passed to it (dataloaders already prepared, so that their batch size
    is known). Return ``None`` to let each object be wrapped by its own hook.

    :param accelerator: the accelerator preparing.
    :param models: the models passed to ``prepare``, in order.
    :param optimizers: the optimizers passed to ``prepare``, in order.
    :param schedulers: the learning-rate schedulers passed to ``prepare``, in order.
    :param dataloaders: the prepared dataloaders.
    :return: a :class:`~plait.training.PreparedObjects` mapping each original object
        (by identity) to its replacement.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_wrap_model(
    accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool
) -> torch.nn.Module | None:
    """Wrap a placed model for training (DistributedDataParallel, FSDP...).

    Core's default returns the model as it is. Mixed precision is not this hook's
    business: after it, the accelerator wraps the returned module's ``forward`` with
    ``accelerator.precision.wrap_forward`` (autocast, outputs cast back to fp32).

    :param accelerator: the accelerator preparing the model.
    :param model: the model, already placed on the device.
    :param evaluation_mode: ``True`` when the model is prepared for inference only
        (no gradient synchronisation wrapper is needed).
    :return: the model to train.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_wrap_optimizer(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> Any | None:
    """Wrap an optimizer so that ``step``/``zero_grad`` obey gradient accumulation and scaling.

    :param accelerator: the accelerator preparing the optimizer.
    :param optimizer: the user's optimizer (its parameters are already the prepared
        model's parameters).
    :return: the optimizer object the training loop will use.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_wrap_scheduler(accelerator: Accelerator, scheduler: Any) -> Any | None:
    """Wrap a learning-rate scheduler so that it steps only when the optimizer really stepped.

    :param accelerator: the accelerator preparing the scheduler.
    :param scheduler: the user's ``torch.optim.lr_scheduler.LRScheduler``.
    :return: the scheduler object the training loop will use.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_wrap_dataloader(accelerator: Accelerator, dataloader: Any) -> Any | None:
    """Shard and wrap a dataloader (per-process batches, device placement, resumable position).

    :param accelerator: the accelerator preparing the dataloader.
    :param dataloader: the user's :class:`torch.utils.data.DataLoader`.
    :return: the dataloader the training loop will iterate.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_unwrap_model(
    accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool
) -> torch.nn.Module | None:
    """Return the user's module inside whatever :func:`plait_wrap_model` put around it.

    Implementations peel their own wrapper and call
    ``accelerator.unwrap_model(inner, keep_fp32_wrapper)`` for what is inside, or
    return ``None`` when ``model`` is not theirs.

    :param accelerator: the accelerator asking.
    :param model: a prepared (or plain) model.
    :param keep_fp32_wrapper: keep the mixed-precision ``forward`` when ``True``.
    :return: the unwrapped module.

    Stops at the first non-None result.
    """


# --------------------------------------------------------------------------- #
# precision
# --------------------------------------------------------------------------- #


@hookspec(firstresult=True)
def plait_precision(accelerator: Accelerator) -> Precision | None:
    """Return the object that owns autocast, backward, gradient scaling and the optimizer step.

    Called once per accelerator. Core's default is
    :class:`plait.precision.TorchAmpPrecision` (``torch.autocast`` and, for fp16,
    :class:`torch.amp.GradScaler`). Engines that scale and step themselves
    (DeepSpeed, XLA) return their own :class:`~plait.precision.Precision`.

    :param accelerator: the accelerator; ``accelerator.mixed_precision`` is
        ``"no"``, ``"fp16"`` or ``"bf16"``.
    :return: a :class:`~plait.precision.Precision`.

    Stops at the first non-None result.
    """


# --------------------------------------------------------------------------- #
# sync
# --------------------------------------------------------------------------- #


@hookspec(firstresult=True)
def plait_sync_control(accelerator: Accelerator) -> GradientSyncControl | None:
    """Return the object that skips gradient synchronisation on the micro-steps of accumulation.

    Called once per accelerator. ``accumulate`` asks its ``skips_sync(model)`` once per
    prepared model: a model whose gradients are never synchronised (one process, an
    engine that is told each micro-step whether it is a boundary) costs nothing per
    step; for the others, the micro-steps that do not step the optimizer run inside
    ``no_sync(model)``, and so does ``accelerator.no_sync(model)``. Core's default,
    :class:`plait.training.GradientSyncControl`, uses the model's own ``no_sync()``
    (DistributedDataParallel's) when it has one.

    :param accelerator: the accelerator asking.
    :return: a :class:`~plait.training.GradientSyncControl`.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_clip_grad_norm(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
) -> torch.Tensor | None:
    """Clip gradients to ``max_norm`` and return the total norm before clipping.

    Gradients are already unscaled when this is called. Sharded backends must
    return the norm over all shards.

    :param accelerator: the accelerator asking.
    :param parameters: the parameters whose gradients are clipped.
    :param max_norm: the largest allowed norm.
    :param norm_type: the p of the p-norm (``inf`` for the max norm).
    :return: the total norm, a scalar tensor.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_clip_grad_value(
    accelerator: Accelerator, parameters: Iterable[torch.Tensor], clip_value: float
) -> bool | None:
    """Clamp every gradient element to ``[-clip_value, clip_value]``.

    :param accelerator: the accelerator asking.
    :param parameters: the parameters whose gradients are clipped.
    :param clip_value: the bound.
    :return: ``True`` once done.

    Stops at the first non-None result.
    """


# --------------------------------------------------------------------------- #
# state saving
# --------------------------------------------------------------------------- #


@hookspec(firstresult=True)
def plait_save_model(
    accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int
) -> bool | None:
    """Write a prepared model's state into a checkpoint being written.

    Called on every process. Write files only through ``writer``
    (:meth:`~plait.checkpoint.CheckpointWriter.save_safetensors`,
    :meth:`~plait.checkpoint.CheckpointWriter.torch_save`, or
    :meth:`~plait.checkpoint.CheckpointWriter.path` followed by
    :meth:`~plait.checkpoint.CheckpointWriter.add`) so that each file enters the
    manifest with its checksum. Core's default writes ``model.safetensors``
    (``model_<index>.safetensors`` for later models) from the main process.

    :param accelerator: the accelerator saving.
    :param model: the prepared model.
    :param writer: the checkpoint being written (a temporary directory).
    :param index: the model's position among prepared models.
    :return: ``True`` once handled.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_check_model(
    accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int, strict: bool
) -> bool | None:
    """Check, before anything is loaded, that a checkpoint's state for a model fits it; change nothing.

    ``load_state`` calls this for every model it will load, and :func:`plait_check_optimizer` for every
    optimizer, before any ``plait_load_*`` hook runs, so that a checkpoint that does not fit is
    refused with nothing in memory changed. Raise :class:`~plait.errors.CheckpointError` naming the
    file, the key and both shapes, ending with "nothing was loaded". Read the files' headers
    (:meth:`~plait.checkpoint.CheckpointReader.safetensors_shapes`), not their tensors, where you can.
    Core's default checks the keys (with ``strict``) and shapes of ``model.safetensors`` and of this
    process's gradients file. A backend whose :func:`plait_load_model` reads files of its own should
    implement this too: a model whose backend checks nothing is loaded unchecked.

    :param accelerator: the accelerator loading.
    :param model: the prepared model (without ``torch.compile``'s wrapper).
    :param checkpoint: the verified checkpoint; read only through it.
    :param index: the model's position among prepared models.
    :param strict: whether keys must match exactly.
    :return: ``True`` once checked.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_load_model(
    accelerator: Accelerator, model: torch.nn.Module, directory: str, index: int, strict: bool,
    checkpoint: CheckpointReader,
) -> bool | None:
    """Load a model's state from a verified checkpoint.

    The manifest and every checksum are verified, and :func:`plait_check_model` and
    :func:`plait_check_optimizer` passed for everything, before this is called. Read files only
    through ``checkpoint`` (:meth:`~plait.checkpoint.CheckpointReader.load_safetensors`,
    :meth:`~plait.checkpoint.CheckpointReader.torch_load`,
    :meth:`~plait.checkpoint.CheckpointReader.path`): it refuses the files the manifest does not list,
    and it never unpickles anything but tensors, numbers and containers.

    :param accelerator: the accelerator loading.
    :param model: the prepared model to load into.
    :param directory: the checkpoint directory (``checkpoint.directory``, as a string).
    :param index: the model's position among prepared models.
    :param strict: whether keys must match exactly.
    :param checkpoint: the verified checkpoint being loaded.
    :return: ``True`` once handled.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_save_optimizer(
    accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int
) -> bool | None:
    """Write a prepared optimizer's state into a checkpoint being written.

    Same contract as :func:`plait_save_model`; core's default writes
    ``optimizer.safetensors`` (its tensors) and ``optimizer.pt`` (the rest of its state
    dict), suffixed ``_<index>`` for later optimizers, from the main process.

    :param accelerator: the accelerator saving.
    :param optimizer: the prepared optimizer.
    :param writer: the checkpoint being written.
    :param index: the optimizer's position among prepared optimizers.
    :return: ``True`` once handled.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_check_optimizer(
    accelerator: Accelerator, optimizer: Any, checkpoint: CheckpointReader, index: int
) -> bool | None:
    """Check, before anything is loaded, that a checkpoint's state for an optimizer fits it; change nothing.

    Same contract as :func:`plait_check_model`. Core's default compares the optimizer's class with
    the one the manifest records (``metadata["optimizer_classes"]``, the wrapped optimizer's
    ``module.qualname``; a checkpoint written before it was recorded is checked on the rest), the
    number of parameter groups and of parameters in each, and each state tensor's shape with its
    parameter's where both have the same number of dimensions. An optimizer whose backend checks
    nothing is loaded unchecked.

    :param accelerator: the accelerator loading.
    :param optimizer: the prepared optimizer.
    :param checkpoint: the verified checkpoint; read only through it.
    :param index: the optimizer's position among prepared optimizers.
    :return: ``True`` once checked.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_load_optimizer(
    accelerator: Accelerator, optimizer: Any, directory: str, index: int, checkpoint: CheckpointReader
) -> bool | None:
    """Load a prepared optimizer's state from a verified checkpoint.

    Same contract as :func:`plait_load_model`: read files only through ``checkpoint``.

    :param accelerator: the accelerator loading.
    :param optimizer: the prepared optimizer.
    :param directory: the checkpoint directory (``checkpoint.directory``, as a string).
    :param index: the optimizer's position among prepared optimizers.
    :param checkpoint: the verified checkpoint being loaded.
    :return: ``True`` once handled.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_get_state_dict(accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any] | None:
    """Return the model's full (consolidated) state dict, with unwrapped key names when ``unwrap``.

    Sharded backends gather the shards here (on every process, or on the main
    process only, as documented by the backend). Used by ``get_state_dict`` and
    ``save_model``.

    :param accelerator: the accelerator asking.
    :param model: a prepared model.
    :param unwrap: strip wrapper prefixes from the key names.
    :return: a mapping of parameter and buffer names to tensors.

    Stops at the first non-None result.
    """


@hookspec
def plait_checkpoint_saved(accelerator: Accelerator, directory: str) -> None:
    """Notify that a checkpoint is complete and in place (after its atomic rename).

    Called on every process, after every process finished writing. Use it to
    upload, index or prune checkpoints.

    :param accelerator: the accelerator that saved.
    :param directory: the final checkpoint directory.
    """


# --------------------------------------------------------------------------- #
# trackers
# --------------------------------------------------------------------------- #


@hookspec
def plait_tracker_start(
    accelerator: Accelerator, project_name: str, config: Mapping[str, Any] | None, init_kwargs: Mapping[str, Any]
) -> None:
    """Start a run (``init_trackers``). Called on the main process only.

    A tracker plugin is loaded only when its entry-point name (in the
    ``plait.trackers`` group) is in ``log_with``; it starts its run here, stores
    ``config`` as the run's hyper-parameters, and reads its own keyword arguments
    from ``init_kwargs.get(<its name>, {})``. Write files under
    ``accelerator.logging_dir`` when it is set.

    :param accelerator: the accelerator starting trackers.
    :param project_name: the project or run name given to ``init_trackers``.
    :param config: hyper-parameters to store with the run, or ``None``.
    :param init_kwargs: per-tracker keyword arguments, keyed by tracker name.
    """


@hookspec
def plait_tracker_log(
    accelerator: Accelerator, values: Mapping[str, Any], step: int | None, log_kwargs: Mapping[str, Any]
) -> None:
    """Log ``values`` at ``step`` (``log``). Called on the main process only.

    Values are scalars (numbers, 0-d tensors), and possibly strings, dicts of
    scalars, images or histograms: skip and warn once about the kinds your
    tracker cannot store. An exception raised here is reported by a warning (once
    per tracker) and training continues, unless the user asked for strict trackers.

    :param accelerator: the accelerator logging.
    :param values: names to values.
    :param step: the global step, or ``None`` for the tracker's own counter.
    :param log_kwargs: per-tracker keyword arguments, keyed by tracker name.
    """


@hookspec
def plait_tracker_finish(accelerator: Accelerator) -> None:
    """Finish the run and flush files (``end_training``). Called on the main process only.

    :param accelerator: the accelerator ending.
    """


@hookspec(firstresult=True)
def plait_tracker_get(accelerator: Accelerator, name: str, unwrap: bool) -> Any | None:
    """Return the tracker called ``name`` (``get_tracker``), or ``None`` if it is not yours.

    :param accelerator: the accelerator asking.
    :param name: a tracker name from ``log_with``.
    :param unwrap: return the library's native object (wandb run, SummaryWriter,
        comet Experiment) instead of the tracker.
    :return: the tracker or the native object.

    Stops at the first non-None result.
    """


# --------------------------------------------------------------------------- #
# cli
# --------------------------------------------------------------------------- #


@hookspec
def plait_cli_commands(cli: click.Group) -> None:
    """Add commands to the ``plait`` command line (``cli.add_command(...)``).

    Called once when the command line starts, for every loaded plugin.

    :param cli: the top-level ``click`` group.
    """


@hookspec
def plait_launch_options() -> Mapping[str, Sequence[click.Option]] | None:
    """Add flags to ``plait launch`` that set options of a config section (your backend's).

    Called once when the command line starts, for every installed plugin, before
    any backend is selected (so keep it free of heavy imports). The mapping's keys
    are section names; each ``click.Option``'s parameter name is the key it sets
    in that section. A value is used only when the flag is given, so give every
    option ``default=None`` (boolean flags as ``--x/--no-x``). ``plait launch``
    hands the section to the workers in ``PLAIT_<SECTION>``, over the config file's
    values::

        return {"zero": [click.Option(["--zero-stage", "stage"], type=click.IntRange(1, 3), default=None)]}

    :return: section name to the options that fill it.
    """


@hookspec
def plait_env_report(config: Config) -> list[tuple[str, str]] | None:
    """Contribute lines to ``plait env``: versions of your dependencies, devices found.

    Import what you report on inside the function; a missing library is a line
    saying so, never an exception.

    :param config: the resolved configuration.
    :return: ``(label, value)`` pairs.
    """


@hookspec(firstresult=True)
def plait_launch(config: Config, command: Sequence[str]) -> int | None:
    """Own the launching of worker processes (``plait launch``) for the selected backend.

    The command line registers every installed plugin, so a backend answers only when
    ``config.backend`` is its own name; return ``None`` to let the default
    (``torch.distributed.run``) launch.

    :param config: the resolved configuration (backend, processes, machines...).
    :param command: the script (or ``-m module``) and its arguments.
    :return: the job's exit code.

    Stops at the first non-None result.
    """


@hookspec(firstresult=True)
def plait_config_questions(backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
    """Ask the questions of ``backend``'s config section (``plait config``).

    ``ask(question, default=..., choices=None, type=str)`` prompts the user and
    returns the answer. A backend answers only for its own name.

    :param backend: the backend chosen in the questionnaire.
    :param ask: the prompt function.
    :return: the backend's config section.

    Stops at the first non-None result.
    """
