"""Writing the files of a checkpoint, each checksummed as it is written, for the manifest.

Checksums are XXH3-128 (see :mod:`plait.checkpoint.directory` for why); ``sha256``
entries of older manifests are verified too.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from plait.errors import CheckpointError

#: The manifest's file name: written last, it makes a directory a complete checkpoint.
MANIFEST = "plait_checkpoint.json"
_CHUNK = 16 * 1024 * 1024


#: The checksum written into new manifests; every algorithm here can be verified.
ALGORITHM = "xxh3_128"


def _new_digest(algorithm: str) -> Any:
    if algorithm == "xxh3_128":
        import xxhash

        return xxhash.xxh3_128()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise CheckpointError(f"checksum algorithm {algorithm!r} is unknown: expected 'xxh3_128' or 'sha256'")


def checksum_file(path: Path, algorithm: str = ALGORITHM) -> str:
    """A file's checksum, read in large chunks."""
    digest = _new_digest(algorithm)
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
    return str(digest.hexdigest())


def map_and_checksum(path: Path, algorithm: str = ALGORITHM) -> tuple[mmap.mmap | None, str]:
    """A file mapped copy-on-write and its checksum, computed from the mapping: the pages of the page cache
    are hashed where they lie (no copy into a buffer), and what is loaded next is read from the same mapping
    (:func:`plait.checkpoint.tensor_files.safetensors_from_buffer`), so a verified file is read once.
    ``None`` for an empty file (it cannot be mapped)."""
    digest = _new_digest(algorithm)
    with open(path, "rb") as f:
        if not os.fstat(f.fileno()).st_size:
            return None, str(digest.hexdigest())
        mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if hasattr(mapping, "madvise"):
        mapping.madvise(mmap.MADV_SEQUENTIAL)
    with memoryview(mapping) as view:
        for start in range(0, len(view), _CHUNK):
            digest.update(view[start:start + _CHUNK])
    return mapping, str(digest.hexdigest())


class HashingFile:
    """A file opened for writing whose checksum is computed from the bytes as they are written."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._digest = _new_digest(ALGORITHM)
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._digest.update(view)
        written = self._file.write(view)
        self.size += written
        return written

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def entry(self) -> dict[str, Any]:
        """This file's manifest entry."""
        return {"algorithm": ALGORITHM, "digest": str(self._digest.hexdigest()), "size": self.size}

    def __enter__(self) -> HashingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CheckpointWriter:
    """The checkpoint being written: hand it every file so that it enters the manifest.

    Files written through :meth:`save_safetensors` and :meth:`torch_save` are
    checksummed while they are written; a file written by other means and
    registered with :meth:`add` is checksummed in a background thread.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="plait-checksum")
        self._pending: dict[str, Future[dict[str, Any]]] = {}
        self._done: dict[str, dict[str, Any]] = {}

    def path(self, name: str) -> Path:
        """The path at which to write file ``name`` (a relative path; folders are created)."""
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or name == MANIFEST:
            raise CheckpointError(f"checkpoint file name {name!r} is not allowed: expected a relative path inside it")
        target = self.directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add(self, name: str) -> None:
        """Record that file ``name`` (see :meth:`path`) is written; its checksum starts now."""
        target = self.directory / name
        if not target.is_file():
            raise CheckpointError(f"checkpoint file {name!r} was added but not written at {target}")
        self._pending[name] = self._pool.submit(
            lambda: {"algorithm": ALGORITHM, "digest": checksum_file(target), "size": target.stat().st_size}
        )

    def add_tree(self, name: str) -> None:
        """Record every file under folder ``name`` (for libraries that write a folder of their own)."""
        root = self.directory / name
        for file in sorted(p for p in root.rglob("*") if p.is_file()):
            self.add(file.relative_to(self.directory).as_posix())

    def save_safetensors(self, name: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
        """Write ``tensors`` (contiguous, no two sharing memory) as a safetensors file ``name``."""
        from plait.checkpoint.tensor_files import write_safetensors

        with HashingFile(self.path(name)) as f:
            write_safetensors(f, tensors, metadata)
        self._done[name] = f.entry()

    def torch_save(self, name: str, obj: Any) -> None:
        """Write ``obj`` with ``torch.save``; it must load with ``weights_only=True`` (tensors, numbers, containers)."""
        import torch

        crc32 = torch.serialization.get_crc32_options()
        torch.serialization.set_crc32_options(False)  # the file's SHA-256 already covers every byte
        try:
            with HashingFile(self.path(name)) as f:
                torch.save(obj, f)  # type: ignore[arg-type]  # a binary file object: write() and flush()
        finally:
            torch.serialization.set_crc32_options(crc32)
        self._done[name] = f.entry()

    def files(self) -> dict[str, dict[str, Any]]:
        """Every added file with its checksum and size (waits for the checksums)."""
        try:
            files = dict(self._done)
            files.update({name: future.result() for name, future in self._pending.items()})
            return dict(sorted(files.items()))
        finally:
            self._pool.shutdown(wait=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


