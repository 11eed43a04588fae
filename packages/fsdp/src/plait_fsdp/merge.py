"""``plait fsdp merge-weights``: a sharded checkpoint's model weights as one safetensors file, in one process.

Finding the weights and writing the file are core's (:mod:`plait.utils.other`, whose ``merge_fsdp_weights``
is HF Accelerate's function), read through core's restricted :mod:`plait.checkpoint.dcp_reader`, so that a
crafted ``.metadata`` runs nothing: inside a plait checkpoint only the files its manifest lists are read, in a bare
DCP directory the files beside ``.metadata``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def merge_weights(checkpoint_dir: str | os.PathLike[str], output: str | os.PathLike[str], index: int = 0) -> Path:
    """Consolidate the weights of model ``index`` of a checkpoint into one safetensors file.

    :param checkpoint_dir: a plait checkpoint (its manifest and checksums are verified first) or a
        torch.distributed.checkpoint directory of model weights.
    :param output: the file to write (``*.safetensors``), or a directory to write ``model.safetensors`` in.
    :return: the file written.
    """
    from plait.checkpoint import MANIFEST
    from plait.checkpoint.tensor_files import load_safetensors
    from plait.utils.other import consolidate_weights, find_sharded_weights, write_weights

    target = Path(output)
    if target.suffix != ".safetensors":
        target = target / "model.safetensors"
    source = find_sharded_weights(checkpoint_dir, index)  # verifies a plait checkpoint's manifest and checksums
    if source.is_file():
        return write_weights(load_safetensors(source), target, safe_serialization=True)
    listed = None  # a DCP directory given as it is: the files beside its .metadata
    if Path(checkpoint_dir).resolve() != source.resolve() and (source.parent / MANIFEST).is_file():
        # inside a plait checkpoint, verified just now
        files = json.loads((source.parent / MANIFEST).read_text(encoding="utf-8"))["files"]
        listed = [name.split("/", 1)[1] for name in files if name.startswith(f"{source.name}/")]
    return write_weights(consolidate_weights(source, listed), target, safe_serialization=True)
