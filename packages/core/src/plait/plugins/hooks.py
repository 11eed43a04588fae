"""One typed caller over a plugin manager's hooks (tox's ``plugin/manager.py`` is the model).

Every call of a plait hook from core and the command line goes through :class:`Hooks`,
so that the arguments and the result of each are type-checked, and an object a hook
hands over (a precision, collectives, a sync control) is checked once, here, with a
message naming the plugin's mistake. Tracker start/log/finish are the exception: they
are fanned out one implementation at a time (:func:`plait.tracking.call_each`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pluggy

from plait.errors import PluginError

if TYPE_CHECKING:
    import click
    import torch

    from plait.accelerator import Accelerator
    from plait.checkpoint import CheckpointReader, CheckpointWriter
    from plait.collectives import Collectives
    from plait.config import Config
    from plait.precision import Precision
    from plait.process import ProcessEnvironment
    from plait.training import GradientSyncControl, PreparedObjects

_T = TypeVar("_T")


def _checked(value: Any, expected: type[_T], public_name: str, hook: str, fix: str) -> _T:
    if not isinstance(value, expected):
        raise PluginError(f"{hook} returned {type(value).__name__!r}: expected a {public_name}; {fix}")
    return value


class Hooks:
    """The hooks of one plugin manager, one typed method each. Core's defaults answer every
    *firstresult* hook, so those methods never return ``None`` unless the spec allows it."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook

    # ------------------------------------------------------------------ environment
    def backend_options(self, backend: str, options: Mapping[str, Any] | object) -> object:
        return cast(object, self._hook.plait_backend_options(backend=backend, options=options))

    def process_environment(self, config: Config) -> ProcessEnvironment:
        from plait.process import ProcessEnvironment

        return _checked(self._hook.plait_process_environment(config=config), ProcessEnvironment,
                        "plait.process.ProcessEnvironment", "plait_process_environment", "return plait.process.ProcessEnvironment(rank=..., world_size=...)")

    def device(self, config: Config, environment: ProcessEnvironment) -> torch.device:
        return cast("torch.device", self._hook.plait_device(config=config, environment=environment))

    def collectives(self, config: Config, environment: ProcessEnvironment, device: torch.device) -> Collectives:
        from plait.collectives import Collectives

        return _checked(self._hook.plait_collectives(config=config, environment=environment, device=device),
                        Collectives, "plait.collectives.Collectives", "plait_collectives", "make the plugin's collectives a subclass of it")

    def distributed_type(self, accelerator: Accelerator) -> str:
        return cast(str, self._hook.plait_distributed_type(accelerator=accelerator))

    def shutdown(self, accelerator: Accelerator) -> None:
        self._hook.plait_shutdown(accelerator=accelerator)

    # ------------------------------------------------------------------ placement
    def place_model(self, accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
        return cast("torch.nn.Module", self._hook.plait_place_model(accelerator=accelerator, model=model))

    def batch_placer(self, accelerator: Accelerator, dataloader: Any) -> Callable[[Any], Any]:
        return cast("Callable[[Any], Any]", self._hook.plait_batch_placer(accelerator=accelerator, dataloader=dataloader))

    def init_module(self, accelerator: Accelerator, empty_init: bool | None) -> AbstractContextManager[Any]:
        return cast("AbstractContextManager[Any]",
                    self._hook.plait_init_module(accelerator=accelerator, empty_init=empty_init))

    # ------------------------------------------------------------------ wrapping
    def prepare_jointly(
        self, accelerator: Accelerator, models: Sequence[torch.nn.Module], optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[Any], dataloaders: Sequence[Any],
    ) -> PreparedObjects | None:
        return cast("PreparedObjects | None", self._hook.plait_prepare_jointly(
            accelerator=accelerator, models=models, optimizers=optimizers, schedulers=schedulers,
            dataloaders=dataloaders,
        ))

    def wrap_model(self, accelerator: Accelerator, model: torch.nn.Module, evaluation_mode: bool) -> torch.nn.Module:
        return cast("torch.nn.Module",
                    self._hook.plait_wrap_model(accelerator=accelerator, model=model, evaluation_mode=evaluation_mode))

    def wrap_optimizer(self, accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> Any:
        return self._hook.plait_wrap_optimizer(accelerator=accelerator, optimizer=optimizer)

    def wrap_scheduler(self, accelerator: Accelerator, scheduler: Any) -> Any:
        return self._hook.plait_wrap_scheduler(accelerator=accelerator, scheduler=scheduler)

    def wrap_dataloader(self, accelerator: Accelerator, dataloader: Any) -> Any:
        return self._hook.plait_wrap_dataloader(accelerator=accelerator, dataloader=dataloader)

    def unwrap_model(self, accelerator: Accelerator, model: torch.nn.Module, keep_fp32_wrapper: bool) -> torch.nn.Module:
        return cast("torch.nn.Module", self._hook.plait_unwrap_model(
            accelerator=accelerator, model=model, keep_fp32_wrapper=keep_fp32_wrapper))

    # ------------------------------------------------------------------ precision and sync
    def precision(self, accelerator: Accelerator) -> Precision:
        from plait.precision import Precision

        return _checked(self._hook.plait_precision(accelerator=accelerator), Precision, "plait.precision.Precision", "plait_precision",
                        "make the plugin's precision class a subclass of it")

    def sync_control(self, accelerator: Accelerator) -> GradientSyncControl:
        from plait.training import GradientSyncControl

        return _checked(self._hook.plait_sync_control(accelerator=accelerator), GradientSyncControl,
                        "plait.training.GradientSyncControl", "plait_sync_control", "make the plugin's sync control a subclass of it")

    def clip_grad_norm(
        self, accelerator: Accelerator, parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float
    ) -> torch.Tensor:
        return cast("torch.Tensor", self._hook.plait_clip_grad_norm(
            accelerator=accelerator, parameters=parameters, max_norm=max_norm, norm_type=norm_type))

    def clip_grad_value(self, accelerator: Accelerator, parameters: Iterable[torch.Tensor], clip_value: float) -> None:
        self._hook.plait_clip_grad_value(accelerator=accelerator, parameters=parameters, clip_value=clip_value)

    # ------------------------------------------------------------------ state saving
    def save_model(self, accelerator: Accelerator, model: torch.nn.Module, writer: CheckpointWriter, index: int) -> None:
        self._hook.plait_save_model(accelerator=accelerator, model=model, writer=writer, index=index)

    def check_model(
        self, accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int, strict: bool
    ) -> bool:
        """Whether a plugin checked the model's saved state (``False``: none did, it is loaded unchecked)."""
        return bool(self._hook.plait_check_model(
            accelerator=accelerator, model=model, checkpoint=checkpoint, index=index, strict=strict))

    def load_model(
        self, accelerator: Accelerator, model: torch.nn.Module, checkpoint: CheckpointReader, index: int, strict: bool
    ) -> None:
        self._hook.plait_load_model(accelerator=accelerator, model=model, directory=str(checkpoint.directory),
                                    index=index, strict=strict, checkpoint=checkpoint)

    def save_optimizer(self, accelerator: Accelerator, optimizer: Any, writer: CheckpointWriter, index: int) -> None:
        self._hook.plait_save_optimizer(accelerator=accelerator, optimizer=optimizer, writer=writer, index=index)

    def check_optimizer(self, accelerator: Accelerator, optimizer: Any, checkpoint: CheckpointReader, index: int) -> bool:
        """Whether a plugin checked the optimizer's saved state (``False``: none did, it is loaded unchecked)."""
        return bool(self._hook.plait_check_optimizer(
            accelerator=accelerator, optimizer=optimizer, checkpoint=checkpoint, index=index))

    def load_optimizer(self, accelerator: Accelerator, optimizer: Any, checkpoint: CheckpointReader, index: int) -> None:
        self._hook.plait_load_optimizer(accelerator=accelerator, optimizer=optimizer,
                                        directory=str(checkpoint.directory), index=index, checkpoint=checkpoint)

    def get_state_dict(self, accelerator: Accelerator, model: torch.nn.Module, unwrap: bool) -> dict[str, Any]:
        return cast("dict[str, Any]", self._hook.plait_get_state_dict(accelerator=accelerator, model=model, unwrap=unwrap))

    def checkpoint_saved(self, accelerator: Accelerator, directory: str) -> None:
        self._hook.plait_checkpoint_saved(accelerator=accelerator, directory=directory)

    # ------------------------------------------------------------------ trackers
    def tracker_get(self, accelerator: Accelerator, name: str, unwrap: bool) -> Any:
        return self._hook.plait_tracker_get(accelerator=accelerator, name=name, unwrap=unwrap)

    # ------------------------------------------------------------------ cli
    def cli_commands(self, cli: click.Group) -> None:
        self._hook.plait_cli_commands(cli=cli)

    def launch_options(self) -> list[tuple[str, click.Option]]:
        """``(section, option)`` for every flag the plugins add to ``plait launch``."""
        found: list[tuple[str, click.Option]] = []
        for contribution in self._hook.plait_launch_options():
            for section, options in (contribution or {}).items():
                found.extend((section, option) for option in options)
        return found

    def env_report(self, config: Config) -> list[tuple[str, str]]:
        """Every plugin's ``plait env`` lines, core's first."""
        reports: list[list[tuple[str, str]] | None] = self._hook.plait_env_report(config=config)
        return [line for report in reversed(reports) for line in report or []]

    def launch(self, config: Config, command: Sequence[str]) -> int | None:
        return cast("int | None", self._hook.plait_launch(config=config, command=command))

    def config_questions(self, backend: str, ask: Callable[..., Any]) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self._hook.plait_config_questions(backend=backend, ask=ask))
