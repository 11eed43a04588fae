"""Checkpoint directories that are complete or absent: temporary names, the manifest, the atomic rename,
verification before loading, and rotation.

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

import json
import os
import re
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from plait.checkpoint.writer import ALGORITHM, MANIFEST, checksum_file
from plait.errors import CheckpointError

FORMAT_VERSION = 1
TMP_MARK = ".plait-tmp-"
OLD_MARK = ".plait-old-"
_AUTO_NAME = re.compile(r"^checkpoint_(\d+)$")


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
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
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
