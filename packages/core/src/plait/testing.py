"""Running code on N real processes, as a launcher would: for plait's tests and for plugin authors.

``run_processes(fn, 2)`` starts two worker processes with torch's elastic agent
(the machinery behind ``torchrun --standalone``): each gets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``... and the rendezvous address, so an
``Accelerator`` built inside ``fn`` forms a real gloo process group. Each rank's
return value comes back, in rank order. ``run_script`` does the same for a script,
through ``python -m torch.distributed.run``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

#: Variables a launcher (torchrun, the elastic agent) sets. A test that inherits them from the shell
#: would run as a worker of someone else's job: :func:`isolate_environment` removes them.
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "NODE_RANK",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
)


def _resolve(module: str, path: str, qualname: str) -> Callable[..., Any]:
    try:
        target: Any = importlib.import_module(module)
    except ImportError:
        target = None
    if target is None or module == "__main__" or not hasattr(target, qualname.split(".")[0]):
        spec = importlib.util.spec_from_file_location(f"_plait_testing_{uuid.uuid4().hex}", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {qualname} from {path}")
        target = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(target)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target  # type: ignore[no-any-return]


def _trampoline(module: str, path: str, qualname: str, args: tuple[Any, ...], env: Mapping[str, str]) -> Any:
    os.environ.update(env)
    return _resolve(module, path, qualname)(*args)


def run_processes(
    function: Callable[..., Any],
    num_processes: int = 2,
    args: Sequence[Any] = (),
    env: Mapping[str, str] | None = None,
    max_restarts: int = 0,
) -> list[Any]:
    """Run ``function(*args)`` in ``num_processes`` fresh processes; return each rank's result in rank order.

    ``function`` must be defined at module level (it is re-imported in each worker,
    from its module or its file); its arguments and return value must pickle. A
    worker that fails raises :class:`torch.distributed.elastic.multiprocessing.errors.ChildFailedError`
    here, with the worker's traceback.

    :param env: extra environment variables for the workers (``PLAIT_*`` settings).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes={num_processes}: expected at least 1")
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=f"plait-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=max_restarts,
        monitor_interval=0.1,
        start_method="spawn",
    )
    path = inspect.getfile(function)
    results = elastic_launch(config, _trampoline)(
        function.__module__, path, function.__qualname__, tuple(args), dict(env or {})
    )
    return [results[rank] for rank in range(num_processes)]


def run_script(
    script: str | os.PathLike[str],
    num_processes: int = 2,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float | None = 600,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` on ``num_processes`` processes with ``python -m torch.distributed.run --standalone``.

    :return: the finished process (its output captured as text).
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={num_processes}",
        "--monitor-interval=0.1", os.fspath(script), *args,
    ]
    environment = {**os.environ, **(env or {})}
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}"
            f"\n--- stderr ---\n{result.stderr[-6000:]}"
        )
    return result


def install_plugins(
    sources: Sequence[str | os.PathLike[str]], target: str | os.PathLike[str], build_root: str | os.PathLike[str]
) -> subprocess.Popen[str]:
    """Start installing plugin distributions for real, offline: ``pip install --no-deps --no-index --target``.

    Put ``target`` on ``sys.path`` (or ``PYTHONPATH`` for subprocesses) and plait finds
    the plugins through their entry points, as it finds any installed package's.
    Each source directory is copied under ``build_root`` first (setuptools writes
    ``build/`` next to the sources). Wait for the returned process; its output says
    what failed.
    """
    import shutil
    from pathlib import Path

    copies = []
    for source in map(Path, sources):
        copy = Path(build_root) / source.name
        shutil.copytree(source, copy)
        copies.append(str(copy))
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-deps", "--no-build-isolation", "--no-index", "--target", os.fspath(target), *copies,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def isolate_environment(
    monkeypatch: Any, config_home: str | os.PathLike[str], prefixes: Sequence[str] = ("PLAIT_", "SLURM_"),
    names: Sequence[str] = (),
) -> None:
    """Make a test independent of the developer's shell: remove every variable starting with one of
    ``prefixes`` (plait's settings, SLURM's), the launcher's (:data:`LAUNCHER_VARIABLES`) and ``names``,
    and point ``XDG_CONFIG_HOME`` at ``config_home`` so that no user config file is read.

    :param monkeypatch: a ``pytest.MonkeyPatch``, which restores everything afterwards.
    """
    environ: MutableMapping[str, str] = os.environ
    monkeypatch.setenv("XDG_CONFIG_HOME", os.fspath(config_home))
    for name in list(environ):
        if name.startswith(tuple(prefixes)) or name in LAUNCHER_VARIABLES or name in names:
            monkeypatch.delenv(name)


def free_port() -> int:
    """A TCP port free on this machine now (for a rendezvous a test starts itself)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def max_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """The largest absolute difference between two state dicts with the same keys (in float64)."""
    assert a.keys() == b.keys(), f"different keys: {sorted(set(a) ^ set(b))}"
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def identical(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two state dicts with the same keys hold bit-identical tensors."""
    import torch

    assert a.keys() == b.keys(), f"different keys: {sorted(set(a) ^ set(b))}"
    return all(torch.equal(a[k], b[k]) for k in a)


def snapshot(value: Any) -> Any:
    """A deep copy of nested dicts, lists and tuples of tensors (a sharded ``DTensor`` as its local shard),
    to compare with :func:`same` after something that must not have changed them."""
    import torch

    if isinstance(value, torch.Tensor):
        local = value.to_local() if hasattr(value, "to_local") else value
        return local.detach().clone()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [snapshot(v) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Whether two nested structures (see :func:`snapshot`) hold the same keys and bit-identical tensors."""
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a is b or bool(a == b)


def assert_refused(ranks: Sequence[Mapping[str, Any]], case: str, *needles: str) -> None:
    """Assert that on every process ``case`` was refused with a ``CheckpointError`` naming each of ``needles``
    and that nothing in memory changed: each ``ranks[i][case]`` is ``{"error": error_of(...), "unchanged":
    same(before, after)}``, as a worker reports a refused load."""
    for rank in ranks:
        result = rank[case]
        assert str(result["error"]).startswith("CheckpointError"), result["error"]
        for needle in needles:
            assert needle in result["error"], result["error"]
        assert "nothing was loaded" in result["error"]
        assert result["unchanged"], f"{case}: a tensor changed in memory although the load was refused"


def error_of(function: Callable[[], Any]) -> str | None:
    """``"ExceptionType: message"`` of what ``function()`` raises, or ``None``: how a worker process
    reports an expected error back to the test (exceptions themselves may not pickle)."""
    try:
        function()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None

