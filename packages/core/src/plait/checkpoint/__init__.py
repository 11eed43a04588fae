"""Checkpoints: directories that are complete or absent (:mod:`~plait.checkpoint.directory`), files
checksummed as they are written (:mod:`~plait.checkpoint.writer`), state dicts as safetensors
(:mod:`~plait.checkpoint.tensor_files`), core's format for models and optimizers
(:mod:`~plait.checkpoint.default_state`), HF-style weight exports (:mod:`~plait.checkpoint.exports`),
and the Accelerator's checkpointer (:mod:`~plait.checkpoint.checkpointer`).

This package's ``__init__`` imports no torch: the command line reads manifests too.
"""

from __future__ import annotations

from plait.checkpoint.directory import (
    FORMAT_VERSION,
    OLD_MARK,
    TMP_MARK,
    automatic_checkpoints,
    commit,
    make_durable,
    remove_stale_temporaries,
    rotate,
    temporary_path,
    verify,
    write_manifest,
)
from plait.checkpoint.writer import ALGORITHM, MANIFEST, CheckpointWriter, HashingFile, checksum_file

__all__ = [
    "ALGORITHM",
    "FORMAT_VERSION",
    "MANIFEST",
    "OLD_MARK",
    "TMP_MARK",
    "CheckpointWriter",
    "HashingFile",
    "automatic_checkpoints",
    "checksum_file",
    "commit",
    "make_durable",
    "remove_stale_temporaries",
    "rotate",
    "temporary_path",
    "verify",
    "write_manifest",
]
