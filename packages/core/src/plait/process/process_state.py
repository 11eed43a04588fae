"""The Accelerator's process part: where this process stands, its device, barriers, and running code
on some processes only (HF Accelerate's names)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from plait.collectives.splitting import split_for_process

if TYPE_CHECKING:
    import torch

    from plait.collectives import Collectives
    from plait.process.environment import ProcessEnvironment


class ProcessState:
    """This process's place in the job (from :func:`~plait.hookspecs.plait_process_environment`), its
    device (:func:`~plait.hookspecs.plait_device`), and what needs only those: barriers through the
    run's collectives, ``main_process_first``, ``split_between_processes``, the ``on_*`` decorators."""

    def __init__(self, environment: ProcessEnvironment, device: torch.device, collectives: Collectives) -> None:
        self.environment = environment
        self.device = device
        self._collectives = collectives
        self._trigger = False

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

    def set_trigger(self) -> None:
        """Raise this process's flag: the next :meth:`check_trigger` is true on every process (early stopping)."""
        self._trigger = True

    def check_trigger(self) -> bool:
        """Whether any process called :meth:`set_trigger` since the last check that was true; a collective:
        every process must call it. A true check lowers every flag."""
        import torch

        flag = torch.tensor(1 if self._trigger else 0, device=self.device)
        if int(self._collectives.reduce(flag, "sum").item()) >= 1:
            self._trigger = False
            return True
        return False

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this point."""
        self._collectives.barrier()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (e.g. to download or cache once)."""
        if not self.is_main_process:
            self.wait_for_everyone()
        yield
        if self.is_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def local_main_process_first(self) -> Iterator[None]:
        """Run the block on each machine's local main process first, then on the others."""
        if not self.is_local_main_process:
            self.wait_for_everyone()
        yield
        if self.is_local_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """Yield this process's contiguous share of ``inputs`` (a list, tuple, dict of lists, or tensor).

        With ``apply_padding`` every share has the same length, padded with the last item of ``inputs``.
        """
        yield split_for_process(inputs, self.process_index, self.num_processes, apply_padding)

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
