"""Reading a verified checkpoint: only the files its manifest lists, and never through an unrestricted unpickler.

Every read of a checkpoint by core goes through :class:`CheckpointReader`: ``.pt`` files with
``torch.load(weights_only=True)`` (an allowlist of globals at most), safetensors files with
safetensors. A file the manifest does not list cannot be read, even if it lies in the directory
(copied there from another checkpoint, say): :func:`plait.checkpoint.directory.open_checkpoint`
verified the listed ones.

This module imports nothing heavy at its top (torch and safetensors load with the first read), so
that the hook specifications can name :class:`CheckpointReader` without making ``import plait`` slower.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plait.errors import CheckpointError

if TYPE_CHECKING:
    import torch

#: The manifest's file name (the same as :data:`plait.checkpoint.writer.MANIFEST`, without importing it).
_MANIFEST = "plait_checkpoint.json"
_ALIASES_KEY = "plait_aliases"


def safe_torch_load(path: Path, allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with at most ``allowed_globals`` allowed;
    any failure (a crafted pickle, a refused global, a truncated file) is a
    :class:`~plait.errors.CheckpointError` naming the file. The one place core unpickles a checkpoint file."""
    import torch

    try:
        if allowed_globals:
            with torch.serialization.safe_globals(list(allowed_globals)):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's refusal says why on a line of its own ("WeightsUnpickler error: Unsupported global: ...").
        reason = next((line for line in lines if "WeightsUnpickler error" in line), lines[0])
        # torch's advice to allow the refused global is the wrong advice for a crafted file.
        reason = reason.split(" Please use", 1)[0].split(" or `torch.serialization.safe_globals", 1)[0]
        raise CheckpointError(
            f"checkpoint file {path} could not be loaded safely with torch.load(weights_only=True) "
            f"({type(exc).__name__}: {reason}); nothing was loaded (it holds something other than tensors, "
            f"numbers and containers, or it is damaged: load a checkpoint plait wrote)"
        ) from None


class CheckpointReader:
    """A verified checkpoint being loaded: only the files its manifest lists can be read.

    Built by :func:`plait.checkpoint.directory.open_checkpoint` after the manifest and every
    checksum were verified; handed to the ``plait_check_*`` and ``plait_load_*`` hooks.

    :param directory: the checkpoint directory (made absolute).
    :param manifest: its verified manifest.
    :param mappings: copy-on-write mappings of verified files, from which their first load reads.
    """

    def __init__(self, directory: Path, manifest: dict[str, Any], mappings: dict[str, mmap.mmap] | None = None) -> None:
        self.directory = Path(directory).absolute()
        self.manifest = manifest
        self.metadata: dict[str, Any] = manifest.get("metadata", {})
        self._files: dict[str, Any] = manifest.get("files", {})
        # A file read by a check and then by the load is unpickled once: the second read takes the first's result.
        self._once: dict[str, Any] = {}
        # Files mapped while they were verified: the first load of each reads the verified pages.
        self._mappings = dict(mappings or {})

    def __repr__(self) -> str:
        return f"CheckpointReader({str(self.directory)!r}, {len(self._files)} files)"

    def has(self, name: str) -> bool:
        """Whether file ``name`` (a relative posix path) is listed in the manifest."""
        return name in self._files

    def names(self, prefix: str = "") -> list[str]:
        """The listed file names that start with ``prefix`` (``"pytorch_model_fsdp_0/"``), sorted."""
        return sorted(name for name in self._files if name.startswith(prefix))

    def path(self, name: str) -> Path:
        """The path of listed file ``name``; :class:`~plait.errors.CheckpointError` naming the manifest when
        the manifest does not list it (a file beside the listed ones is never read)."""
        if name not in self._files:
            raise CheckpointError(
                f"checkpoint manifest {self.directory / _MANIFEST} does not list file {name!r}, which loading needs: "
                f"the checkpoint is incomplete or was written for other objects; nothing was loaded "
                f"(load a checkpoint saved by save_state for the same objects)"
            )
        return self.directory / name

    def torch_load(self, name: str, allowed_globals: Sequence[Any] = ()) -> Any:
        """Listed ``.pt`` file ``name`` through ``torch.load(map_location="cpu", weights_only=True)``, inside
        ``torch.serialization.safe_globals(allowed_globals)``; any failure is a
        :class:`~plait.errors.CheckpointError` naming the file.

        A check and the load that follows it read a file once: the second call for a name returns the
        object the first returned (do not modify it), later calls read the file again."""
        if name in self._once:
            return self._once.pop(name)
        value = safe_torch_load(self.path(name), allowed_globals)
        self._once[name] = value
        return value

    def load_safetensors(self, name: str) -> dict[str, torch.Tensor]:
        """Listed safetensors file ``name`` as a state dict, tied tensors restored from its metadata. The
        first load of a file mapped while it was verified returns views of that mapping (written
        copy-on-write, never to the file); later loads read the file again."""
        from plait.checkpoint.tensor_files import load_safetensors, safetensors_from_buffer

        path = self.path(name)
        mapping = self._mappings.pop(name, None)
        try:
            return safetensors_from_buffer(mapping, path) if mapping is not None else load_safetensors(path)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint file {path} is not a readable safetensors file ({type(exc).__name__}: {exc}); "
                f"nothing was loaded"
            ) from None

    def safetensors_shapes(self, name: str) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor of listed safetensors file ``name`` (tied names included), read from
        its header only: no tensor is read."""
        path = self.path(name)
        header = self._safetensors_header(name, path)
        shapes: dict[str, tuple[int, ...]] = {}
        try:
            for key, entry in header.items():
                if key != "__metadata__":
                    shapes[key] = tuple(int(n) for n in entry["shape"])
            metadata = header.get("__metadata__") or {}
            for alias, kept in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
                if kept in shapes:
                    shapes[alias] = shapes[kept]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(
                f"checkpoint file {path} has a malformed safetensors header ({type(exc).__name__}: {exc}); "
                f"nothing was loaded"
            ) from None
        return shapes

    def _safetensors_header(self, name: str, path: Path) -> dict[str, Any]:
        from plait.checkpoint.tensor_files import mapped_header, safetensors_header

        mapping = self._mappings.get(name)
        if mapping is not None:
            return mapped_header(mapping, path)[0]
        with open(path, "rb") as f:
            return safetensors_header(f.read(8), f.read, path)[0]
