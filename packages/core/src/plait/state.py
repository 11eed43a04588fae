"""HF Accelerate's ``accelerate.state``: :class:`PartialState`, :class:`AcceleratorState`, :class:`GradientState`.

:class:`PartialState` is this process's place in the job, one state shared by every instance and
usable without an :class:`~plait.Accelerator`: created first, it starts the default process group
the way core does; otherwise it adopts the first accelerator's process part. Each accelerator keeps
its own ``state`` and ``gradient_state``, so several stay independent; ``AcceleratorState()`` and
``GradientState()`` answer for the most recently created one still alive.
"""

from __future__ import annotations

import datetime
import os
import types
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from plait.delegation import attribute, delegate
from plait.process.environment import DistributedType
from plait.process.process_state import ProcessState
from plait.training.gradient_state import GradientState as _TrainingGradientState
from plait.utils.backend_plugins import select_deepspeed_plugin

if TYPE_CHECKING:
    import torch

    from plait.accelerator import Accelerator
    from plait.collectives import Collectives
    from plait.config import Config

_T = TypeVar("_T")

__all__ = ["AcceleratorState", "DistributedType", "GradientState", "PartialState", "is_initialized", "share_accelerator"]

_accelerators: list[weakref.ref[Accelerator]] = []  # every accelerator created here, oldest first (weakly)
#: ``GradientState()``'s object while no accelerator is alive.
_lone_gradient_state: GradientState | None = None


def latest_accelerator() -> Accelerator | None:
    """The most recently created accelerator still alive, or ``None``."""
    for reference in reversed(_accelerators):
        accelerator = reference()
        if accelerator is not None:
            return accelerator
    return None


def is_initialized() -> bool:
    """Whether an :class:`~plait.Accelerator` was created (HF Accelerate's ``accelerate.state.is_initialized``)."""
    return latest_accelerator() is not None


def _kind(value: str) -> DistributedType | str:
    """A backend's distributed type as a :class:`DistributedType` member (a third-party name as it is)."""
    return DistributedType(value) if value in DistributedType._value2member_map_ else value


def _group_backend() -> str | None:
    """The default process group's backend name, or ``None`` when there is no group."""
    import torch.distributed as dist

    return str(dist.get_backend()) if dist.is_available() and dist.is_initialized() else None


class _Shared(Generic[_T]):
    """An attribute read from :class:`PartialState`'s shared state (an error explaining a reset one), or
    with ``setting`` an :class:`AcceleratorState` setting: its accelerator's attribute (``None`` if absent)."""

    def __init__(self, setting: bool = False) -> None:
        self.setting = setting

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> _T:
        if self.setting:
            return cast(_T, getattr(instance.settings, self.name, None))
        try:
            value: _T = PartialState._shared_state[self.name]
        except KeyError:
            raise AttributeError(
                f"PartialState has no {self.name!r}: its shared state was reset (PartialState._reset_state()) and "
                f"neither PartialState() nor Accelerator() was created since; create one first"
            ) from None
        return value


class _ProcessViews:
    """The process attributes and methods of the states, read from a :class:`~plait.process.ProcessState`."""

    process: ProcessState

    process_index: attribute[int] = attribute("process")
    local_process_index: attribute[int] = attribute("process")
    num_processes: attribute[int] = attribute("process")
    device: attribute[torch.device] = attribute("process")
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


class PartialState(_ProcessViews):
    """This process's place in the job, its device and barriers; one state shared by every instance.

    :param cpu: use the CPU even where an accelerator is available (also ``PLAIT_CPU=1``).
    :param kwargs: HF Accelerate's ``InitProcessGroupKwargs``: ``backend`` (default nccl on CUDA, gloo
        on CPU), ``timeout`` (a ``timedelta`` or seconds), ``init_method`` (``"env://"``); read only by
        the first state of the process, as in HF Accelerate.
    """

    _shared_state: ClassVar[dict[str, Any]] = {}
    #: Whether HF Accelerate's ``notebook_launcher``/``debug_launcher`` (or plait's) started this process.
    fork_launched: bool

    def __init__(self, cpu: bool = False, **kwargs: Any) -> None:
        self.__dict__ = self._shared_state
        if not self._shared_state:
            self._shared_state.update(_start(cpu, kwargs))
        self.fork_launched = os.environ.get("FORK_LAUNCHED", "0") == "1"

    process: _Shared[ProcessState] = _Shared()
    #: The collectives of the process (``plait.utils.gather``, ``reduce``... run on them).
    collectives: _Shared[Collectives] = _Shared()
    distributed_type: _Shared[DistributedType | str] = _Shared()
    #: The ``torch.distributed`` backend of the default group (``"gloo"``, ``"nccl"``), ``None`` without one.
    backend: _Shared[str | None] = _Shared()
    debug: _Shared[bool] = _Shared()

    @property
    def initialized(self) -> bool:
        """Whether the shared state exists (it does after any ``PartialState()`` or ``Accelerator()``)."""
        return bool(self._shared_state)

    def destroy_process_group(self, group: Any = None) -> None:
        """Destroy ``group``, by default the default process group (kept when a launcher forked this process)."""
        if self.fork_launched and group is None:
            return
        import torch.distributed as dist

        from plait.process import group as default_group

        if group is None:
            default_group.finish()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group(group)

    @staticmethod
    def _reset_state() -> None:
        """Forget the shared state (for tests): the next ``PartialState()`` or ``Accelerator()`` makes it again."""
        PartialState._shared_state.clear()

    def __repr__(self) -> str:
        backend = f"  Backend: {self.backend}" if self.backend else ""
        return (f"Distributed environment: {self.distributed_type}{backend}\nNum processes: {self.num_processes}\n"
                f"Process index: {self.process_index}\nLocal process index: {self.local_process_index}\n"
                f"Device: {self.device}\n")


def _group_arguments(cpu: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``PartialState(cpu, **kwargs)`` as config arguments, every value checked."""
    unknown = sorted(set(kwargs) - {"backend", "timeout", "init_method"})
    if unknown:
        raise TypeError(
            f"PartialState() got the keyword arguments {', '.join(unknown)}, which plait does not read: it accepts "
            f"cpu and InitProcessGroupKwargs' backend, timeout and init_method"
        )
    if kwargs.get("init_method") not in (None, "env://"):
        raise ValueError(
            f"init_method={kwargs['init_method']!r} is not supported: plait starts the process group from the "
            f"launcher's variables (init_method='env://'); set MASTER_ADDR and MASTER_PORT instead"
        )
    arguments: dict[str, Any] = {"cpu": True} if cpu else {}
    timeout = kwargs.get("timeout")
    if timeout is not None:
        seconds = timeout.total_seconds() if isinstance(timeout, datetime.timedelta) else timeout
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise ValueError(f"timeout={timeout!r} is not valid: expected a datetime.timedelta or seconds above 0")
        arguments["process_group_timeout"] = max(1, round(seconds))
    backend = kwargs.get("backend")
    if backend is not None:
        started = _group_backend()
        if started not in (None, backend):
            raise ValueError(
                f"backend={backend!r} cannot be used: the default process group was already started with "
                f"{started!r}; pass backend={started!r} or none"
            )
        arguments["process_group_backend"] = backend
    return arguments


def _resolve(arguments: Mapping[str, Any]) -> Config:
    from plait.config import resolve_config
    from plait.plugins import discovery

    return resolve_config(arguments, extra_backends=discovery.installed_backends())


def _start(cpu: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The shared state of a :class:`PartialState` created before any accelerator: core's process
    environment (the default group started: nccl on CUDA, gloo on CPU), device and collectives."""
    from plait.builtin import plait_collectives, plait_device
    from plait.process import group

    config = _resolve(_group_arguments(cpu, kwargs))
    environment = group.start(config)
    device = plait_device(config, environment)
    collectives = plait_collectives(config, environment, device)
    kind = DistributedType.NO
    if environment.world_size > 1:
        kind = DistributedType.MULTI_GPU if device.type == "cuda" else DistributedType.MULTI_CPU
    process = ProcessState(environment, device, collectives)
    return {"process": process, "collectives": collectives, "distributed_type": kind, "backend": _group_backend(),
            "debug": config.debug, "_from_accelerator": False}


def share_accelerator(accelerator: Accelerator) -> AcceleratorState:
    """Make ``accelerator`` the most recent one and return its :class:`AcceleratorState` (at the end of
    ``Accelerator.__init__``). The first accelerator gives :class:`PartialState` its process part when no
    ``PartialState()`` came first, and its distributed type in any case (as HF Accelerate's does)."""
    global _accelerators
    _accelerators = [r for r in _accelerators if r() is not None] + [weakref.ref(accelerator)]
    gradient_state = accelerator.gradient_state
    if type(gradient_state) is _TrainingGradientState:
        gradient_state.__class__ = GradientState  # the same object, with HF Accelerate's names added
    shared = PartialState._shared_state
    if not shared:
        backend = _group_backend() if accelerator.num_processes > 1 else None
        shared.update(process=accelerator.process, collectives=accelerator.collectives, backend=backend,
                      debug=accelerator.config.debug, fork_launched=os.environ.get("FORK_LAUNCHED", "0") == "1")
    if not shared.get("_from_accelerator"):
        shared.update(distributed_type=_kind(accelerator.distributed_type), _from_accelerator=True)
    return AcceleratorState._made(accelerator, accelerator, accelerator.process)


class AcceleratorState(_ProcessViews):
    """HF Accelerate's ``AcceleratorState``: a run's settings and process part.

    ``accelerator.state`` is bound to ``accelerator``. ``AcceleratorState()`` returns the most recently
    created live accelerator's (an error if its arguments contradict it); with none, a state over
    :class:`PartialState` with ``mixed_precision`` from the arguments, else from the config.
    """

    accelerator: Accelerator | None
    #: The accelerator, or for a state without one the settings it was given.
    settings: Any
    mixed_precision: _Shared[str] = _Shared(setting=True)
    deepspeed_plugin: _Shared[Any] = _Shared(setting=True)
    fsdp_plugin: _Shared[Any] = _Shared(setting=True)
    dynamo_plugin: _Shared[Any] = _Shared(setting=True)
    deepspeed_plugins: _Shared[Any] = _Shared(setting=True)
    select_deepspeed_plugin = select_deepspeed_plugin

    def __new__(
        cls,
        mixed_precision: str | None = None,
        cpu: bool = False,
        dynamo_plugin: Any = None,
        deepspeed_plugin: Any = None,
        fsdp_plugin: Any = None,
        _from_accelerator: bool = False,
        **kwargs: Any,
    ) -> AcceleratorState:
        mixed_precision = mixed_precision.lower() if isinstance(mixed_precision, str) else mixed_precision
        state = getattr(latest_accelerator(), "state", None)
        if isinstance(state, AcceleratorState):
            done = "an Accelerator was already created and its state cannot be changed"
            if mixed_precision is not None and mixed_precision != state.mixed_precision:
                raise ValueError(
                    f"AcceleratorState(mixed_precision={mixed_precision!r}): {done} (mixed_precision="
                    f"{state.mixed_precision!r}); pass mixed_precision={mixed_precision!r} to that Accelerator()"
                )
            if cpu and state.device.type != "cpu":
                raise ValueError(f"AcceleratorState(cpu=True): {done} (device {state.device}); pass cpu=True to it")
            return state
        process = PartialState(cpu, **kwargs).process
        config = _resolve({"mixed_precision": mixed_precision} if mixed_precision is not None else {})
        settings = types.SimpleNamespace(
            mixed_precision=config.mixed_precision, dynamo_plugin=dynamo_plugin, deepspeed_plugin=deepspeed_plugin,
            fsdp_plugin=fsdp_plugin,
        )
        return cls._made(None, settings, process)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``__new__`` did everything (it may return an accelerator's existing state)."""

    @classmethod
    def _made(cls, accelerator: Accelerator | None, settings: Any, process: ProcessState) -> AcceleratorState:
        self = object.__new__(cls)
        self.accelerator, self.settings, self.process = accelerator, settings, process
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # a copy is made as it was, not through __new__'s lookup
        return (AcceleratorState._made, (self.accelerator, self.settings, self.process))

    @property
    def initialized(self) -> bool:
        """Whether this state belongs to an :class:`~plait.Accelerator`."""
        return self.accelerator is not None

    @property
    def distributed_type(self) -> DistributedType | str:
        accelerator = self.accelerator
        return _kind(accelerator.distributed_type) if accelerator is not None else PartialState().distributed_type

    backend: _Shared[str | None] = _Shared()
    debug: _Shared[bool] = _Shared()
    fork_launched: _Shared[bool] = _Shared()
    destroy_process_group = PartialState.destroy_process_group

    @staticmethod
    def _reset_state(reset_partial_state: bool = False) -> None:
        """Forget every accelerator (for tests): ``AcceleratorState()`` and ``GradientState()`` no longer
        return theirs; with ``reset_partial_state`` the :class:`PartialState` is reset too."""
        _accelerators.clear()
        if reset_partial_state:
            PartialState._reset_state()

    def __repr__(self) -> str:
        return f"{PartialState()!r}Mixed precision type: {self.mixed_precision}\n"


class _GradientStateType(type):
    """``GradientState()`` returns the latest accelerator's gradient state; every plait gradient state is one."""

    def __instancecheck__(cls, instance: Any) -> bool:
        if cls is GradientState:
            return isinstance(instance, _TrainingGradientState)
        return super().__instancecheck__(instance)

    def __call__(cls, gradient_accumulation_plugin: Any = None) -> Any:
        global _lone_gradient_state
        accelerator = latest_accelerator()
        if accelerator is None and _lone_gradient_state is None:
            _lone_gradient_state = super().__call__(1)
        state: Any = accelerator.gradient_state if accelerator is not None else _lone_gradient_state
        if gradient_accumulation_plugin is not None:
            _apply_plugin(state, gradient_accumulation_plugin)
        return state


def _apply_plugin(state: _TrainingGradientState, plugin: Any) -> None:
    """Take ``plugin`` (HF Accelerate's ``GradientAccumulationPlugin``) as ``state``'s settings, as Accelerate does."""
    from plait.utils.dataclasses import GradientAccumulationPlugin

    if not isinstance(plugin, GradientAccumulationPlugin):
        raise TypeError(f"gradient_accumulation_plugin={plugin!r}: expected a plait.utils.GradientAccumulationPlugin")
    steps = plugin.num_steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"GradientAccumulationPlugin(num_steps={steps!r}): expected a whole number of at least 1")
    state.plugin_kwargs = plugin.to_kwargs()
    if steps is not None:
        state.num_steps = steps


class GradientState(_TrainingGradientState, metaclass=_GradientStateType):
    """HF Accelerate's ``GradientState``: a :class:`plait.training.GradientState` with Accelerate's other names.

    ``GradientState()`` is the most recently created live accelerator's ``gradient_state`` (the same object),
    else one kept while no accelerator exists; a ``gradient_accumulation_plugin`` replaces its settings.
    """

    __slots__ = ()
    initialized: ClassVar[bool] = True

    @property
    def active_dataloader(self) -> Any:
        return self.active_dataloaders[-1] if self.active_dataloaders else None

    @property
    def dataloader_references(self) -> list[Any]:
        return [None, *self.active_dataloaders]

    def _set_sync_gradients(self, sync_gradients: bool) -> None:
        self.sync_gradients = sync_gradients

    _add_dataloader = _TrainingGradientState.begin
    _remove_dataloader = _TrainingGradientState.end

    @staticmethod
    def _reset_state() -> None:
        """Forget the gradient state kept while no accelerator exists (for tests)."""
        global _lone_gradient_state
        _lone_gradient_state = None

    def __repr__(self) -> str:
        return (f"Sync Gradients: {self.sync_gradients}\nAt end of current dataloader: {self.end_of_dataloader}\n"
                f"Extra samples added: {self.remainder}\nGradient accumulation plugin: {self.plugin_kwargs}\n")
