"""Where this process stands, and running code on some processes only (HF Accelerate's names)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from plait.environment import ProcessEnvironment


class ProcessInfo:
    """HF Accelerate's process properties, read from ``self.environment``, and the ``on_*`` decorators."""

    environment: ProcessEnvironment

    @property
    def process_index(self) -> int:
        return self.environment.rank

    @property
    def local_process_index(self) -> int:
        return self.environment.local_rank

    @property
    def num_processes(self) -> int:
        return self.environment.world_size

    @property
    def is_main_process(self) -> bool:
        return self.environment.is_main_process

    @property
    def is_local_main_process(self) -> bool:
        return self.environment.is_local_main_process

    @property
    def is_last_process(self) -> bool:
        return self.environment.is_last_process

    @property
    def use_distributed(self) -> bool:
        return self.environment.world_size > 1

    def print(self, *args: Any, **kwargs: Any) -> None:
        """``print`` on the local main process only."""
        if self.is_local_main_process:
            print(*args, **kwargs)

    def _on(self, condition: Callable[[], bool], function: Callable[..., Any] | None) -> Any:
        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return func(*args, **kwargs) if condition() else None

            return wrapper

        return decorate(function) if function is not None else decorate

    def on_main_process(self, function: Callable[..., Any] | None = None) -> Any:
        """Decorator: run ``function`` on the main process only (``None`` elsewhere)."""
        return self._on(lambda: self.is_main_process, function)

    def on_local_main_process(self, function: Callable[..., Any] | None = None) -> Any:
        """Decorator: run ``function`` on each machine's local main process only."""
        return self._on(lambda: self.is_local_main_process, function)

    def on_last_process(self, function: Callable[..., Any] | None = None) -> Any:
        """Decorator: run ``function`` on the last process only."""
        return self._on(lambda: self.is_last_process, function)

    def on_process(self, function: Callable[..., Any] | None = None, process_index: int | None = None) -> Any:
        """Decorator: run ``function`` on process ``process_index`` only."""
        if process_index is None:
            raise ValueError("on_process needs process_index: e.g. @accelerator.on_process(process_index=1)")
        # As in HF Accelerate, with one process there is no other process to leave the work to.
        return self._on(lambda: self.process_index == process_index or not self.use_distributed, function)

    def on_local_process(self, function: Callable[..., Any] | None = None, local_process_index: int | None = None) -> Any:
        """Decorator: run ``function`` on local process ``local_process_index`` of each machine only."""
        if local_process_index is None:
            raise ValueError("on_local_process needs local_process_index")
        return self._on(
            lambda: self.local_process_index == local_process_index or not self.use_distributed, function
        )
