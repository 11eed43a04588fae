"""``plait fsdp merge-weights``: a sharded checkpoint's model weights as one safetensors file, in one process.

The work is core's (:mod:`plait.utils.other`, whose ``merge_fsdp_weights`` is HF Accelerate's function and
``plait merge-weights`` its command); this adds the choice of model and of the output file's name.
"""

from __future__ import annotations

import os
from pathlib import Path


def merge_weights(checkpoint_dir: str | os.PathLike[str], output: str | os.PathLike[str], index: int = 0) -> Path:
    """Consolidate the weights of model ``index`` of a checkpoint into one safetensors file.

    :param checkpoint_dir: a plait checkpoint (its manifest and checksums are verified first) or a
        torch.distributed.checkpoint directory of model weights.
    :param output: the file to write (``*.safetensors``), or a directory to write ``model.safetensors`` in.
    :return: the file written.
    """
    from plait.utils.other import consolidate_weights, find_sharded_weights, write_weights

    target = Path(output)
    if target.suffix != ".safetensors":
        target = target / "model.safetensors"
    state = consolidate_weights(find_sharded_weights(checkpoint_dir, index))
    return write_weights(state, target, safe_serialization=True)
