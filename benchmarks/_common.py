"""Shared helpers of the benchmark runner: statistics, machine facts, and JSON-speaking worker subprocesses.

Every contender (raw PyTorch, plait, HF Accelerate) runs in a fresh subprocess of
its own, so that nothing one of them imports or configures can touch another.
Workers answer the runner's commands (dicts) through a pipe.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONTENDERS = ("raw", "plait", "accelerate")


# ---------------------------------------------------------------------------- statistics
def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def quartiles(values: Sequence[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (the values themselves when fewer than 2)."""
    values = sorted(values)
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    q = statistics.quantiles(values, n=4, method="inclusive")
    return float(q[0]), float(q[2])


def rotated(items: Sequence[str], shift: int) -> list[str]:
    """``items`` rotated by ``shift``: each contender goes first, second and last equally often."""
    shift %= len(items)
    return list(items[shift:]) + list(items[:shift])


# ---------------------------------------------------------------------------- machine facts
def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Cores, CPU, OS, Python and the versions of every library compared (read from metadata:
    this process imports none of them)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "plait": _version("plait"),
        "accelerate": _version("accelerate"),
        "safetensors": _version("safetensors"),
        "numpy": _version("numpy"),
    }


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------- environment
class Sandbox:
    """A temporary home for one run: empty config directories (no user's plait or Accelerate
    config file can change what is measured) and scratch space on the same filesystem."""

    def __init__(self, base: str | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="plait-bench-", dir=base))
        for sub in ("config", "hf", "scratch"):
            (self.root / sub).mkdir()

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    def enter(self) -> None:
        """Make this process's environment the sandbox's (before any worker starts: the
        fork server and so every worker inherit it)."""
        for name in [k for k in os.environ if k.startswith(("PLAIT_", "ACCELERATE_"))]:
            del os.environ[name]
        os.environ.update(self.env())

    def env(self, threads: int | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "ACCELERATE_"))}
        env["XDG_CONFIG_HOME"] = str(self.root / "config")
        env["HF_HOME"] = str(self.root / "hf")
        env["PYTHONUNBUFFERED"] = "1"
        if threads is not None:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(threads)
        env.update(extra or {})
        return env

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------- workers
class WorkerError(RuntimeError):
    pass


_CONTEXT: Any = None


def _context() -> Any:
    """Workers are forked from a fork server that has imported torch (and torch._dynamo) and nothing else.

    Each worker is still a fresh process of its own that imports plait or accelerate
    itself (never both), but it does not pay 1-3 s of ``import torch`` on a loaded
    2-core machine: that is what lets a run afford many sets of fresh processes.
    The fork server inherits this process's environment (see :meth:`Sandbox.enter`).
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
        return answer

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


# ---------------------------------------------------------------------------- launching
def torchrun(script: Path, args: Sequence[str], env: Mapping[str, str], timeout: float = 1800) -> None:
    """Run ``script`` on 2 processes under ``python -m torch.distributed.run --standalone``; raise with its
    output if it fails."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               str(script), *args]
    result = subprocess.run(command, env=dict(env), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")

