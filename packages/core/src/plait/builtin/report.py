"""Report default: the versions core depends on, and the devices torch sees."""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait._markers import hookimpl

if TYPE_CHECKING:
    from plait.config import Config


@hookimpl(trylast=True)
def plait_env_report(config: Config) -> list[tuple[str, str]]:
    import platform
    from importlib import metadata

    lines = [("Python", platform.python_version()), ("Platform", platform.platform())]
    for dist in ("plait", "torch", "pluggy", "safetensors", "numpy"):
        try:
            lines.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            lines.append((dist, "not installed"))
    try:
        import torch

        cuda = torch.version.cuda if torch.cuda.is_available() else "not available"
        lines.append(("CUDA", str(cuda)))
        if torch.cuda.is_available():
            lines.append(("GPUs", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))))
            lines.append(("NCCL", ".".join(map(str, torch.cuda.nccl.version()))))
    except Exception as exc:  # a report line, never a crash
        lines.append(("torch devices", f"unavailable ({exc})"))
    return lines
