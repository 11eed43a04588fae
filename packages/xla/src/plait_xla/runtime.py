"""torch_xla's runtime for plait: importing it with errors that say what to install, this process's
place in the job, the device, and the SPMD mesh.

Imported from hook bodies only: importing torch_xla starts nothing, but takes seconds.
"""

from __future__ import annotations

import importlib.util
import os
import re
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

from plait.errors import MissingLibrary, PluginError

if TYPE_CHECKING:
    import torch

    from plait.config import Config
    from plait.process import ProcessEnvironment

INSTALL = "pip install plait[xla]"
#: The name of the mesh axis batches are split along (FSDPv2 names its own ``fsdp``).
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _release(version: str) -> str:
    """``"2.9"`` of ``"2.9.0+cu128"``: torch_xla is built for one torch minor release."""
    return ".".join(re.split(r"[.+]", version)[:2])


def check_installed() -> None:
    """Raise :class:`~plait.errors.MissingLibrary` when torch_xla is not installed, naming what to install
    and the torch it needs (cheap: no import)."""
    if importlib.util.find_spec("torch_xla") is None:
        torch_version = _version("torch") or "not installed"
        raise MissingLibrary(
            f"backend 'xla' needs torch_xla, which is not installed: {INSTALL} (torch_xla is built for one torch "
            f"release: torch_xla 2.9 needs torch==2.9.*, this environment has torch {torch_version}; install both "
            f"with `pip install torch==2.9.0 torch_xla==2.9.0`)",
            "torch_xla",
            INSTALL,
        )


def mismatch() -> str | None:
    """Why this environment's torch and torch_xla cannot work together, or ``None``."""
    torch_version, xla_version = _version("torch"), _version("torch_xla") or _version("torch-xla")
    if torch_version is None or xla_version is None or _release(torch_version) == _release(xla_version):
        return None
    return (
        f"torch_xla {xla_version} is built for torch {_release(xla_version)}, but this environment has torch "
        f"{torch_version}: install matching versions (`pip install torch=={_release(xla_version)}.* "
        f"torch_xla=={xla_version}`, or `pip install torch_xla=={_release(torch_version)}.*`)"
    )


def import_torch_xla() -> ModuleType:
    """``import torch_xla``, with an error naming both versions when it was built for another torch
    (its ``undefined symbol`` ImportError)."""
    try:
        import torch_xla as module
    except ImportError as error:
        if "undefined symbol" in str(error) or mismatch() is not None:
            raise PluginError(
                f"backend 'xla': importing torch_xla failed ({error}); "
                + (mismatch() or f"torch {_version('torch')} and torch_xla {_version('torch_xla')} do not match: "
                   f"install the torch release torch_xla was built for")
            ) from error
        raise
    return module


def start(config: Config, spmd: bool) -> ProcessEnvironment:
    """This process's place in the job, with torch_xla's runtime set up for it.

    * SPMD (``spmd``): one process drives every device of the host; XLA partitions each graph.
    * Launched by torchrun (``RANK``/``WORLD_SIZE``): torch_xla's ``xla://`` process group, which
      sets up the TPU topology of this process's chip (torch_xla's torchrun path).
    * Otherwise torch_xla's own ordinals (one process, or ``torch_xla.launch``).
    """
    from plait.process import ProcessEnvironment
    from plait.process.launch_variables import detect

    import_torch_xla()
    import torch_xla.runtime as xr

    launched = detect(os.environ)
    if spmd:
        if launched.world_size > 1:
            raise PluginError(
                f"xla option spmd=true runs one process that drives every device, but the launcher started "
                f"{launched.world_size} processes: launch one process (`plait launch --backend xla --xla-spmd "
                f"script.py`), or set spmd to false for one process per device"
            )
        xr.use_spmd()
        return ProcessEnvironment()
    if launched.world_size > 1:
        import torch.distributed as dist
        import torch_xla.distributed.xla_backend  # noqa: F401  (registers the "xla" process-group backend)

        if not dist.is_initialized():
            dist.init_process_group("xla", init_method="xla://")
        return launched
    return ProcessEnvironment(
        rank=xr.global_ordinal(), world_size=xr.world_size(),
        local_rank=xr.local_ordinal(), local_world_size=max(1, xr.local_device_count()),
    )


def xla_world_size() -> int:
    """How many replicas XLA's collectives connect (1 under SPMD and on one device)."""
    import torch_xla.runtime as xr

    return int(xr.world_size())


def device() -> torch.device:
    """This process's XLA device (under SPMD, the virtual device every device stands behind)."""
    return import_torch_xla().device()  # type: ignore[no-any-return]


def ensure_spmd() -> None:
    """Turn SPMD on if the options given in code asked for it after the process started."""
    import torch_xla.runtime as xr

    if not xr.is_spmd():
        xr.use_spmd()


def mesh(axis: str) -> Any:
    """A one-axis mesh over every device the runtime reports, set as torch_xla's global mesh."""
    import numpy as np
    import torch_xla.distributed.spmd as xs
    import torch_xla.runtime as xr

    count = xr.global_runtime_device_count()
    found = xs.get_global_mesh()
    if found is not None and tuple(found.axis_names or ()) == (axis,) and found.size() == count:
        return found
    built = xs.Mesh(np.arange(count), (count,), (axis,))
    xs.set_global_mesh(built)
    return built
