"""HF Accelerate's ``accelerate.logging``: a logger that logs on the main process only, unless told otherwise.

``logger = get_logger(__name__)`` works anywhere (at import time too); logging through it needs
the process's state, made by ``PartialState()`` or ``Accelerator()``. ``logger.info(msg)`` logs on
the main process; ``main_process_only=False`` logs on every process, and ``in_order=True`` on every
process one after the other (with a barrier after each; every process must call it).
"""

from __future__ import annotations

import logging as _logging  # the standard library's: absolute imports never find this module
import os
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.state import PartialState

__all__ = ["MultiProcessAdapter", "get_logger"]

#: The variable HF Accelerate reads for the level of the loggers ``get_logger`` returns.
LOG_LEVEL_VARIABLE = "ACCELERATE_LOG_LEVEL"


def _state() -> PartialState:
    from plait.state import PartialState

    if not PartialState._shared_state:
        raise RuntimeError(
            "logging through plait.logging.get_logger() needs the process's state first: create "
            "plait.PartialState() or plait.Accelerator() before logging"
        )
    return PartialState()


class MultiProcessAdapter(_logging.LoggerAdapter[_logging.Logger]):
    """A logger adapter whose calls take two more keywords: ``main_process_only`` (default ``True``: log on
    the main process only) and ``in_order`` (log on every process, one after the other); each message is
    prefixed with ``[RANK i]``. Needs no Accelerator, only the process's state."""

    def __init__(self, logger: _logging.Logger, extra: Any = None) -> None:
        super().__init__(logger, extra or {})
        self._warned: set[tuple[Any, ...]] = set()

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        msg, kwargs = super().process(msg, kwargs)
        # The caller of the logging call is reported, not this module (unless the caller chose a stacklevel).
        kwargs.setdefault("stacklevel", 2)
        return f"[RANK {_state().process_index}] {msg}", kwargs

    def log(  # type: ignore[override]
        self, level: int, msg: object, *args: object, main_process_only: bool = True, in_order: bool = False,
        **kwargs: Any,
    ) -> None:
        """Log ``msg`` on the main process (``main_process_only=False``: on every process; ``in_order=True``:
        on every process in rank order, a barrier after each rank, ignoring ``main_process_only``)."""
        state = _state()
        if not self.isEnabledFor(level):
            return
        text, options = self.process(msg, kwargs)
        if in_order:
            for rank in range(state.num_processes):
                if rank == state.process_index:
                    self.logger.log(level, text, *args, **options)
                state.wait_for_everyone()
        elif not main_process_only or state.is_main_process:
            self.logger.log(level, text, *args, **options)

    def warning_once(self, msg: object, *args: object, **kwargs: Any) -> None:
        """``warning`` the first time this adapter is called with these arguments, nothing afterwards."""
        key = (msg, args, tuple(sorted(kwargs.items(), key=lambda item: item[0])))
        try:
            if key in self._warned:
                return
            self._warned.add(key)
        except TypeError:  # unhashable arguments: warn every time rather than fail
            pass
        kwargs.setdefault("stacklevel", 3)  # the caller of warning_once, not this frame
        self.warning(msg, *args, **kwargs)


def get_logger(name: str, log_level: str | int | None = None) -> MultiProcessAdapter:
    """The logger ``name`` (e.g. ``__name__``), through a :class:`MultiProcessAdapter`.

    :param log_level: the level to set on it and on the root logger (``"INFO"``, ``"debug"``...), as HF
        Accelerate does; by default ``ACCELERATE_LOG_LEVEL`` when set, else the levels are left alone.
    """
    if log_level is None:
        log_level = os.environ.get(LOG_LEVEL_VARIABLE) or None
    logger = _logging.getLogger(name)
    if log_level is not None:
        level = log_level.upper() if isinstance(log_level, str) else log_level
        if isinstance(level, str) and not isinstance(_logging.getLevelName(level), int):
            source = "log_level" if os.environ.get(LOG_LEVEL_VARIABLE) != log_level else LOG_LEVEL_VARIABLE
            raise ValueError(
                f"{source}={log_level!r} is not a logging level: expected one of "
                f"CRITICAL, ERROR, WARNING, INFO, DEBUG, NOTSET (any case) or a number"
            )
        logger.setLevel(level)
        logger.root.setLevel(level)
    return MultiProcessAdapter(logger, {})
