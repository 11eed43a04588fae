"""Checkpoint directories that are complete or absent: temporary names, the manifest, the atomic rename,
verification before loading, and rotation.

A checkpoint is written under a hidden temporary name beside its final path,
every file is checksummed as it is written, a manifest ``plait_checkpoint.json``
listing every file is written last, and only then is the directory renamed into
place. ``load_state`` verifies the manifest and every checksum before it changes
anything, and reads only the files the manifest lists. Before an older checkpoint
is deleted (rotation, overwrite), the new one is flushed to disk, so a power loss
never leaves only a damaged checkpoint; the old one is renamed to a hidden name
before its files are deleted, so an interrupted deletion never leaves a
half-deleted checkpoint that looks complete.

Checksums are XXH3-128: they detect truncated and corrupted files at about 20
GB/s, where SHA-256 (1.8 GB/s here) would cost more than writing the files. The
manifest is not a signature, so a cryptographic hash would add no security;
``sha256`` entries are verified too.
"""

from __future__ import annotations

import errno
import json
import mmap
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from plait.checkpoint.writer import ALGORITHM, MANIFEST, map_and_checksum
from plait.errors import CheckpointError

if TYPE_CHECKING:
    from plait.checkpoint.reader import CheckpointReader

FORMAT_VERSION = 1
TMP_MARK = ".plait-tmp-"
OLD_MARK = ".plait-old-"
#: A checkpoint being deleted (rotation) is renamed with this mark first.
DELETE_MARK = ".plait-deleting-"
_AUTO_NAME = re.compile(r"^checkpoint_(\d+)$")
#: The checksum algorithms a manifest entry may name.
ALGORITHMS = ("xxh3_128", "sha256")


def temporary_path(final: Path, token: str | None = None) -> Path:
    """The hidden sibling a checkpoint for ``final`` is written in before it is renamed."""
    return final.parent / f".{final.name}{TMP_MARK}{token or uuid.uuid4().hex[:12]}"


def remove_stale_temporaries(final: Path) -> None:
    """Remove what interrupted saves to ``final`` left behind, and what interrupted removals left beside it
    (never a complete checkpoint: both have hidden names that are never listed nor loaded)."""
    if not final.parent.is_dir():
        return
    for stale in final.parent.glob(f".{final.name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)
    remove_leftovers(final.parent)


def remove_leftovers(folder: Path) -> None:
    """Finish the removals of old checkpoints that were interrupted in ``folder``: those of
    :func:`remove_checkpoint`, and those of :func:`commit` whose replacement is in place (a replaced
    checkpoint whose replacement never arrived is kept: it is the only copy)."""
    for leftover in folder.glob(f".*{DELETE_MARK}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for leftover in folder.glob(f".*{OLD_MARK}*"):
        name = leftover.name[1:leftover.name.rindex(OLD_MARK)]
        if (folder / name / MANIFEST).is_file():
            shutil.rmtree(leftover, ignore_errors=True)


def remove_checkpoint(checkpoint: Path) -> None:
    """Delete a checkpoint so that no interruption leaves it half-deleted under its name: it is first renamed
    to a hidden name (durably: its folder is flushed), which nothing lists or loads, and only then deleted.
    What an interrupted deletion leaves is removed by the next save into that folder."""
    hidden = checkpoint.parent / f".{checkpoint.name}{DELETE_MARK}{uuid.uuid4().hex[:12]}"
    os.replace(checkpoint, hidden)
    _fsync_directory(checkpoint.parent)
    shutil.rmtree(hidden, ignore_errors=True)


@contextmanager
def removed_on_failure(temporary: Path, final: Path, remove: bool) -> Iterator[None]:
    """Remove the temporary directory of a save to ``final`` (when ``remove``: the main process) if the body fails;
    a full disk becomes a :class:`~plait.errors.CheckpointError` naming ``final`` (the error alone names no path)."""
    try:
        yield
    except BaseException as exc:
        if remove:
            shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(
                f"no space left on the device to save checkpoint {final} ({exc}): nothing was saved and its temporary "
                f"directory was removed; free space on that device, or save elsewhere"
            ) from exc
        raise


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
        os.replace(final, old)  # hidden first: a half-deleted checkpoint is never listed under its name
        os.replace(temporary, final)
        _fsync_directory(final.parent)  # both renames are on disk before any file of the old one is deleted
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

    The manifest must be of a known format, list each file with its size and checksum, and every
    listed file must be there, of that size and checksum. Raises
    :class:`~plait.errors.CheckpointError` naming the problem and the file (the manifest for a
    malformed one). Files the manifest does not list are never read (see :func:`open_checkpoint`).
    """
    return _verified(Path(directory), keep=lambda name: False)[0]


def _verified(path: Path, keep: Callable[[str], bool]) -> tuple[dict[str, Any], dict[str, mmap.mmap]]:
    """:func:`verify`, and the copy-on-write mappings of the verified files ``keep`` names, from which they
    were hashed: loading them reads the same pages (one pass over each file instead of two)."""
    if any(mark in path.name for mark in (TMP_MARK, OLD_MARK, DELETE_MARK)):
        raise CheckpointError(
            f"{path} is an incomplete checkpoint (the temporary directory of a save that did not finish, or an "
            f"old checkpoint being removed): load a complete checkpoint instead; nothing was loaded"
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
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint manifest {manifest_path} is corrupted ({exc}); nothing was loaded") from None
    files = _checked_manifest(manifest, manifest_path)
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing file {name!r} listed in its manifest; nothing was loaded")
        if file.stat().st_size != entry["size"]:
            raise CheckpointError(
                f"checkpoint file {file} is corrupted: {file.stat().st_size} bytes, the manifest says {entry['size']}; "
                f"nothing was loaded"
            )
    mappings: dict[str, mmap.mmap] = {}
    # One thread: the hash holds the GIL, and hashing the mapping leaves no copy to overlap with it.
    for name, entry in files.items():
        mapping, digest = map_and_checksum(path / name, _algorithm(entry))
        if digest != entry.get("digest", entry.get("sha256")):
            raise CheckpointError(
                f"checkpoint file {path / name} is corrupted: its checksum does not match the manifest; "
                f"nothing was loaded"
            )
        if mapping is not None and keep(name):
            mappings[name] = mapping
    return dict(manifest), mappings


def _checked_manifest(manifest: Any, manifest_path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``, after checking its shape: a known format, each entry a size and a checksum."""
    def malformed(problem: str) -> CheckpointError:
        return CheckpointError(
            f"checkpoint manifest {manifest_path} is malformed: {problem}; nothing was loaded "
            f"(load a checkpoint written by save_state, or save it again)"
        )

    if not isinstance(manifest, dict):
        raise malformed(f"expected a JSON object, found {type(manifest).__name__}")
    version = manifest.get("format")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint manifest {manifest_path} has format {version!r}, but this plait reads format "
            f"{FORMAT_VERSION} only: load it with the plait version that wrote it "
            f"({manifest.get('plait_version', 'unknown')}); nothing was loaded"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise malformed(f"'files' is {type(files).__name__}, expected an object of file name to entry")
    if not isinstance(manifest.get("metadata", {}), dict):
        raise malformed(f"'metadata' is {type(manifest['metadata']).__name__}, expected an object")
    for name, entry in files.items():
        parts = PurePosixPath(name).parts
        if not name or name.startswith("/") or ".." in parts or "\\" in name or name == MANIFEST:
            raise malformed(f"file name {name!r} is not a relative path inside the checkpoint")
        if not isinstance(entry, dict):
            raise malformed(f"the entry of {name!r} is {type(entry).__name__}, expected an object")
        size, checksum = entry.get("size"), entry.get("digest", entry.get("sha256"))
        if type(size) is not int or size < 0:
            raise malformed(f"the entry of {name!r} has size {size!r}, expected a number of bytes")
        if not isinstance(checksum, str):
            raise malformed(f"the entry of {name!r} has no checksum ('digest' or 'sha256')")
        algorithm = _algorithm(entry)
        if algorithm not in ALGORITHMS:
            raise malformed(f"the entry of {name!r} names checksum algorithm {algorithm!r}, expected one of {ALGORITHMS}")
    return files


def _algorithm(entry: dict[str, Any]) -> Any:
    """The checksum algorithm of a manifest entry: named, else ``sha256`` for the ``sha256`` entries of old manifests."""
    return entry.get("algorithm", ALGORITHM if "digest" in entry else "sha256")


def open_checkpoint(directory: str | os.PathLike[str]) -> CheckpointReader:
    """Verify ``directory`` (:func:`verify`) and return the reader through which it is loaded."""
    from plait.checkpoint.reader import CheckpointReader

    path = Path(directory).absolute()
    manifest, mappings = _verified(path, keep=lambda name: name.endswith(".safetensors"))
    return CheckpointReader(path, manifest, mappings)


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
    """Remove the oldest complete checkpoints beyond ``total_limit`` (each through :func:`remove_checkpoint`);
    the newest is never removed."""
    removed: list[Path] = []
    checkpoints = automatic_checkpoints(folder)
    if len(checkpoints) > max(total_limit, 1):
        make_durable(checkpoints[-1][1])  # never delete an older one in favour of one a power loss could damage
    while len(checkpoints) > max(total_limit, 1):
        _, oldest = checkpoints.pop(0)
        remove_checkpoint(oldest)
        removed.append(oldest)
    remove_leftovers(folder)
    return removed
