"""Checkpoints: directories that are complete or absent (:mod:`~plait.checkpoint.directory`), files
checksummed as they are written (:mod:`~plait.checkpoint.writer`), verified checkpoints read only through
their manifest (:mod:`~plait.checkpoint.reader`), values stored so that they load safely
(:mod:`~plait.checkpoint.safe_values`), state dicts as safetensors
(:mod:`~plait.checkpoint.tensor_files`), core's format for models and optimizers
(:mod:`~plait.checkpoint.default_state`), the small states of ``load_state`` checked before anything
changes (:mod:`~plait.checkpoint.loading`), HF-style weight exports (:mod:`~plait.checkpoint.exports`),
and the Accelerator's checkpointer (:mod:`~plait.checkpoint.checkpointer`).

This package's ``__init__`` imports nothing: the names below load their module on first use, so that
an Accelerator that never saves pays nothing for them, and the command line reads manifests without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.lazy_names import lazy_names

if TYPE_CHECKING:
    from plait.checkpoint.directory import (
        DELETE_MARK,
        FORMAT_VERSION,
        OLD_MARK,
        TMP_MARK,
        automatic_checkpoints,
        commit,
        make_durable,
        open_checkpoint,
        remove_checkpoint,
        remove_stale_temporaries,
        rotate,
        temporary_path,
        verify,
        write_manifest,
    )
    from plait.checkpoint.reader import CheckpointReader
    from plait.checkpoint.writer import ALGORITHM, MANIFEST, CheckpointWriter, HashingFile, checksum_file

_MODULE_OF = {
    **dict.fromkeys(
        ("DELETE_MARK", "FORMAT_VERSION", "OLD_MARK", "TMP_MARK", "automatic_checkpoints", "commit",
         "make_durable", "open_checkpoint", "remove_checkpoint", "remove_stale_temporaries", "rotate",
         "temporary_path", "verify", "write_manifest"),
        "plait.checkpoint.directory",
    ),
    "CheckpointReader": "plait.checkpoint.reader",
    **dict.fromkeys(("ALGORITHM", "MANIFEST", "CheckpointWriter", "HashingFile", "checksum_file"),
                    "plait.checkpoint.writer"),
}

__all__ = [
    "ALGORITHM",
    "DELETE_MARK",
    "FORMAT_VERSION",
    "MANIFEST",
    "OLD_MARK",
    "TMP_MARK",
    "CheckpointReader",
    "CheckpointWriter",
    "HashingFile",
    "automatic_checkpoints",
    "checksum_file",
    "commit",
    "make_durable",
    "open_checkpoint",
    "remove_checkpoint",
    "remove_stale_temporaries",
    "rotate",
    "temporary_path",
    "verify",
    "write_manifest",
]


__getattr__, __dir__ = lazy_names(globals(), _MODULE_OF)
