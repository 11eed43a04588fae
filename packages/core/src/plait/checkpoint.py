"""Checkpoint directories that are complete or absent.

A checkpoint is written under a hidden temporary name beside its final path,
every file is checksummed as it is written, a manifest ``plait_checkpoint.json``
listing every file is written last, and only then is the directory renamed into
place. ``load_state`` verifies the manifest and every checksum before it changes
anything. Before an older checkpoint is deleted (rotation, overwrite), the new
one is flushed to disk, so a power loss never leaves only a damaged checkpoint.

Checksums are XXH3-128: they detect truncated and corrupted files at about 20
GB/s, where SHA-256 (1.8 GB/s here) would cost more than writing the files. The
manifest is not a signature, so a cryptographic hash would add no security;
``sha256`` entries are verified too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from plait.errors import CheckpointError

MANIFEST = "plait_checkpoint.json"
FORMAT_VERSION = 1
TMP_MARK = ".plait-tmp-"
OLD_MARK = ".plait-old-"
_CHUNK = 16 * 1024 * 1024
_AUTO_NAME = re.compile(r"^checkpoint_(\d+)$")


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
        from plait.serialization import write_safetensors

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


def temporary_path(final: Path, token: str | None = None) -> Path:
    """The hidden sibling a checkpoint for ``final`` is written in before it is renamed."""
    return final.parent / f".{final.name}{TMP_MARK}{token or uuid.uuid4().hex[:12]}"


def remove_stale_temporaries(final: Path) -> None:
    """Remove what interrupted saves to ``final`` left behind (never a complete checkpoint)."""
    if not final.parent.is_dir():
        return
    for stale in final.parent.glob(f".{final.name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_manifest(directory: Path, files: dict[str, dict[str, Any]], metadata: dict[str, Any]) -> None:
    """Write the manifest (last, flushed to disk) that makes ``directory`` a complete checkpoint."""
    from importlib import metadata as importlib_metadata

    manifest = {
        "format": FORMAT_VERSION,
        "plait_version": importlib_metadata.version("plait"),
        "files": files,
        "metadata": metadata,
    }
    path = directory / MANIFEST
    with open(path, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def make_durable(directory: Path) -> None:
    """Flush every file of ``directory`` to disk (before anything older is deleted in its favour)."""
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    _fsync_directory(directory)


def commit(temporary: Path, final: Path, overwrite: bool) -> None:
    """Rename a finished temporary checkpoint into place, replacing ``final`` only when ``overwrite``."""
    if final.exists():
        if not overwrite:
            raise CheckpointError(
                f"checkpoint directory {final} already exists: pass overwrite=True to replace it, "
                f"or save to another directory"
            )
        make_durable(temporary)  # the old checkpoint goes away: the new one must survive a power loss
        old = final.parent / f".{final.name}{OLD_MARK}{uuid.uuid4().hex[:12]}"
        os.replace(final, old)
        os.replace(temporary, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(temporary, final)
    _fsync_directory(final.parent)


def _fsync_directory(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def verify(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that ``directory`` is a complete, uncorrupted checkpoint; return its manifest.

    Raises :class:`~plait.errors.CheckpointError` naming the problem and the file.
    """
    path = Path(directory)
    if TMP_MARK in path.name or OLD_MARK in path.name:
        raise CheckpointError(
            f"{path} is an incomplete checkpoint (the temporary directory of a save that did not finish): "
            f"load a complete checkpoint instead; nothing was loaded"
        )
    if not path.is_dir():
        raise CheckpointError(f"no checkpoint at {path}: the directory does not exist; nothing was loaded")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{path} is not a complete plait checkpoint: its manifest {MANIFEST} is missing; nothing was loaded"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupted ({exc}); nothing was loaded") from None
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing file {name!r} listed in its manifest; nothing was loaded")
        if file.stat().st_size != entry["size"]:
            raise CheckpointError(
                f"checkpoint file {file} is corrupted: {file.stat().st_size} bytes, the manifest says {entry['size']}; "
                f"nothing was loaded"
            )
    def digest(name: str) -> str:
        entry = files[name]
        algorithm = entry.get("algorithm", "sha256" if "sha256" in entry else ALGORITHM)
        return checksum_file(path / name, algorithm)

    with ThreadPoolExecutor(max_workers=2) as pool:
        digests = dict(zip(files, pool.map(digest, files)))
    for name, entry in files.items():
        if digests[name] != entry.get("digest", entry.get("sha256")):
            raise CheckpointError(
                f"checkpoint file {path / name} is corrupted: its checksum does not match the manifest; "
                f"nothing was loaded"
            )
    return manifest


def automatic_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The complete ``checkpoint_<n>`` directories in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        match = _AUTO_NAME.match(child.name)
        if match and (child / MANIFEST).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def rotate(folder: Path, total_limit: int) -> list[Path]:
    """Remove the oldest complete checkpoints beyond ``total_limit``; the newest is never removed."""
    removed: list[Path] = []
    checkpoints = automatic_checkpoints(folder)
    if len(checkpoints) > max(total_limit, 1):
        make_durable(checkpoints[-1][1])  # never delete an older one in favour of one a power loss could damage
    while len(checkpoints) > max(total_limit, 1):
        _, oldest = checkpoints.pop(0)
        shutil.rmtree(oldest)
        removed.append(oldest)
    return removed
