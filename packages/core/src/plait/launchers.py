"""HF Accelerate's ``accelerate.launchers``: run a training function on several processes from a notebook.

``notebook_launcher(train, args, num_processes=2)`` starts the processes with
``torch.multiprocessing`` (forked, so that a function defined in a notebook needs no import),
each with the launcher's variables plait reads (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) and ``PLAIT_MIXED_PRECISION``; the
``Accelerator`` created inside the function then joins the others. ``debug_launcher`` does the
same on CPU processes over gloo, for debugging.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from plait.errors import not_supported

__all__ = ["debug_launcher", "notebook_launcher"]

_MIXED_PRECISION = ("no", "fp16", "bf16")


class _Worker:
    """What each started process runs: the launcher's variables for its index, a fresh plait state, the function."""

    def __init__(self, function: Callable[..., Any], env: Mapping[str, str], processes: int, node_rank: int) -> None:
        self.function, self.env, self.processes, self.node_rank = function, dict(env), processes, node_rank

    def __call__(self, index: int, *args: Any) -> None:
        os.environ.update(self.env)
        os.environ.update(RANK=str(self.node_rank * self.processes + index), LOCAL_RANK=str(index))
        state = sys.modules.get("plait.state")
        if state is not None:  # what the parent had (a forked process inherits it) is not this process's
            state.AcceleratorState._reset_state(reset_partial_state=True)
            state.GradientState._reset_state()
        self.function(*args)


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _count(name: str, value: Any, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name}={value!r} is not valid: expected a whole number of at least {least}")
    return value


def _check_parent(launcher: str, accelerators: bool = True) -> None:
    """Refuse to start processes from a process that already holds what they must create themselves."""
    state = sys.modules.get("plait.state")
    if accelerators and state is not None and state.latest_accelerator() is not None:
        raise ValueError(
            f"{launcher} cannot start several processes here: an Accelerator was already created in this process. "
            f"To launch a multi-device training from a notebook, the Accelerator should only be created inside "
            f"the training function: restart the notebook (or interpreter) and make sure no cell creates one"
        )
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        raise RuntimeError(
            f"{launcher} cannot start processes from a process that is already part of a process group "
            f"(torch.distributed is initialised here): call it from a plain notebook or interpreter"
        )
    if accelerators and torch is not None and torch.cuda.is_initialized():
        raise RuntimeError(
            f"CUDA was initialised in this process before {launcher} could fork its processes: restart the "
            f"notebook and keep every CUDA call (tensors or models on the GPU) inside the training function"
        )


def _launch(function: Callable[..., Any], args: Sequence[Any], processes: int, node_rank: int, env: Mapping[str, str]) -> None:
    import multiprocessing

    from torch.multiprocessing.spawn import ProcessExitedException, ProcessRaisedException, start_processes

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    worker = _Worker(function, env, processes, node_rank)
    try:
        start_processes(worker, args=tuple(args), nprocs=processes, join=True, start_method=method)
    except (ProcessRaisedException, ProcessExitedException) as exc:
        if "Cannot re-initialize CUDA in forked subprocess" in str(exc):
            raise RuntimeError(
                "CUDA was initialised before the launcher forked its processes (an import or a cell used the GPU): "
                "keep every CUDA call inside the training function"
            ) from exc
        raise RuntimeError(f"An issue was found when launching the training: {exc}") from exc


def notebook_launcher(
    function: Callable[..., Any],
    args: Sequence[Any] = (),
    num_processes: int | None = None,
    mixed_precision: str = "no",
    use_port: str | int = "29500",
    master_addr: str = "127.0.0.1",
    node_rank: int = 0,
    num_nodes: int = 1,
    rdzv_backend: str = "static",
    rdzv_endpoint: str = "",
    rdzv_conf: Mapping[str, Any] | None = None,
    rdzv_id: str = "none",
    max_restarts: int = 0,
    monitor_interval: float = 0.1,
    log_line_prefix_template: str | None = None,
) -> None:
    """Run ``function(*args)`` on ``num_processes`` processes of this machine (node ``node_rank`` of
    ``num_nodes``), HF Accelerate's way; with one process in all, call it here.

    The function must create its ``Accelerator`` itself, and nothing in this process may have used CUDA.
    ``mixed_precision`` (``"no"``, ``"fp16"``, ``"bf16"``) is set as ``PLAIT_MIXED_PRECISION`` for it;
    ``use_port`` and ``master_addr`` are node 0's rendezvous (``rdzv_endpoint="host:port"`` overrides
    them). The rendezvous is always static: the processes are started here, not by an elastic agent.
    """
    if not callable(function):
        raise TypeError(f"function={function!r} is not callable: pass the training function to launch")
    if num_processes is None:
        raise ValueError(
            "notebook_launcher needs num_processes=...: the number of processes to start on this machine "
            "(e.g. its number of GPUs)"
        )
    processes = _count("num_processes", num_processes, 1)
    nodes = _count("num_nodes", num_nodes, 1)
    if isinstance(node_rank, bool) or not isinstance(node_rank, int) or not 0 <= node_rank < nodes:
        raise ValueError(f"node_rank={node_rank!r} is not valid: expected 0..{nodes - 1} for num_nodes={nodes}")
    precision = str(mixed_precision).lower()
    if precision not in _MIXED_PRECISION:
        raise ValueError(f"mixed_precision={mixed_precision!r} is not valid: expected one of {', '.join(_MIXED_PRECISION)}")
    if rdzv_backend != "static":
        raise not_supported(f"notebook_launcher(rdzv_backend={rdzv_backend!r})", "leave rdzv_backend='static'")
    if max_restarts:
        raise not_supported(f"notebook_launcher(max_restarts={max_restarts!r})", "restart the launch yourself")
    if rdzv_endpoint:
        master_addr, _, use_port = rdzv_endpoint.rpartition(":")
        if not master_addr:
            raise ValueError(f"rdzv_endpoint={rdzv_endpoint!r} is not valid: expected 'host:port'")
    port = str(use_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"use_port={use_port!r} is not valid: expected a TCP port number (1..65535)")
    if processes * nodes == 1:
        print("Launching training on one process.")
        with _environment({"PLAIT_MIXED_PRECISION": precision}):
            function(*args)
        return
    _check_parent("notebook_launcher")
    env = {
        "WORLD_SIZE": str(processes * nodes), "LOCAL_WORLD_SIZE": str(processes), "NODE_RANK": str(node_rank),
        "MASTER_ADDR": master_addr, "MASTER_PORT": port, "PLAIT_MIXED_PRECISION": precision, "FORK_LAUNCHED": "1",
    }
    print(f"Launching training on {processes} processes.")
    _launch(function, args, processes, node_rank, env)


def debug_launcher(function: Callable[..., Any], args: Sequence[Any] = (), num_processes: int = 2) -> None:
    """Run ``function(*args)`` on ``num_processes`` CPU processes over gloo, for debugging (HF Accelerate's)."""
    import socket

    from plait.testing import free_port

    if not callable(function):
        raise TypeError(f"function={function!r} is not callable: pass the function to launch")
    processes = _count("num_processes", num_processes, 1)
    env = {
        "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()), "PLAIT_CPU": "true", "PLAIT_MIXED_PRECISION": "no", "FORK_LAUNCHED": "1",
    }
    # gloo chooses its network interface from the host name, which is flaky on some machines: the loopback one.
    if "GLOO_SOCKET_IFNAME" not in os.environ and sys.platform.startswith("linux"):
        if "lo" in {name for _, name in socket.if_nameindex()}:
            env["GLOO_SOCKET_IFNAME"] = "lo"
    _check_parent("debug_launcher", accelerators=False)  # CPU processes: an Accelerator or CUDA here is no harm
    _launch(function, args, processes, 0, env)
