"""Worker processes of the benchmark runner: each contender in a fresh process of its own, answering commands.

Workers are forked from a fork server that has imported torch (and torch._dynamo)
and nothing else, so that each is a fresh process that imports plait or accelerate
itself (never both) without paying ``import torch`` again. The runner sends a
command (a dict) through a pipe and reads the answer (a dict); ``serve`` is the
worker's side.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


# ---------------------------------------------------------------------------- workers
class WorkerError(RuntimeError):
    pass


_CONTEXT: Any = None


def _context() -> Any:
    """Workers are forked from a fork server that has imported torch (and torch._dynamo) and nothing else.

    Each worker is still a fresh process of its own that imports plait or accelerate
    itself (never both), but it does not pay 1-3 s of ``import torch`` on a loaded
    2-core machine: that is what lets a run afford many sets of fresh processes.
    The fork server inherits this process's environment (see ``_common.Sandbox.enter``).
    """
    global _CONTEXT
    if _CONTEXT is None:
        import multiprocessing

        _CONTEXT = multiprocessing.get_context("forkserver")
        # torch._dynamo is what the first optimizer built in a process imports (about 1 s).
        _CONTEXT.set_forkserver_preload(["torch", "torch._dynamo"])
    return _CONTEXT


class Channel:
    """The worker's end of its pipe to the runner."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def send(self, answer: Mapping[str, Any]) -> None:
        self._connection.send(dict(answer))

    def commands(self) -> Iterable[dict[str, Any]]:
        while True:
            try:
                command = self._connection.recv()
            except EOFError:
                return
            if command.get("op") == "quit":
                return
            yield command


def _child(connection: Any, target: str, args: Sequence[str], log_path: str) -> None:
    """Runs in the forked worker: output to a log file, then the worker's ``main(channel, *args)``."""
    import importlib

    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    channel = Channel(connection)
    module_name, function = target.split(":")
    try:
        main = getattr(importlib.import_module(module_name), function)
        main(channel, *args)
    except BaseException as exc:
        channel.send({"error": f"{type(exc).__name__}: {exc}"})
        raise
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class Worker:
    """One contender's process: send a command (a dict), receive its answer (a dict)."""

    def __init__(self, target: str, args: Sequence[str]) -> None:
        self.name = " ".join([target, *args])
        context = _context()
        log = tempfile.NamedTemporaryFile(prefix="plait-bench-worker-", suffix=".log", delete=False)  # noqa: SIM115
        log.close()
        self._log = Path(log.name)
        self._connection, child = context.Pipe()
        self.proc = context.Process(target=_child, args=(child, target, list(args), str(self._log)), daemon=True)
        self.proc.start()
        child.close()
        self.ready: dict[str, Any] = {}

    def receive(self) -> dict[str, Any]:
        try:
            answer = self._connection.recv()
        except EOFError:
            self.proc.join(timeout=30)
            raise WorkerError(
                f"{self.name} exited with code {self.proc.exitcode}:\n{self._log.read_text(errors='replace')[-4000:]}"
            ) from None
        if "error" in answer:
            raise WorkerError(f"{self.name}: {answer['error']}\n{self._log.read_text(errors='replace')[-4000:]}")
        return dict(answer)

    def start(self) -> dict[str, Any]:
        """Wait until the worker is set up; its ``ready`` message."""
        self.ready = self.receive()
        return self.ready

    def ask(self, **command: Any) -> dict[str, Any]:
        self._connection.send(command)
        return self.receive()

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self._connection.send({"op": "quit"})
            except OSError:
                pass
            self.proc.join(timeout=60)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join()
        self._connection.close()
        self._log.unlink(missing_ok=True)


def serve(channel: Channel, handlers: Mapping[str, Any], ready: Mapping[str, Any]) -> None:
    """The worker side: announce ``ready``, then answer each command until ``quit``."""
    channel.send(ready)
    for command in channel.commands():
        op = command.pop("op")
        channel.send(handlers[op](**command))
