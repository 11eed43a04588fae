"""``plait fsdp merge-weights``: a sharded checkpoint's model weights as one safetensors file, in one process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from plait.errors import CheckpointError


def merge_weights(checkpoint_dir: str | os.PathLike[str], output: str | os.PathLike[str], index: int = 0) -> Path:
    """Consolidate the weights of model ``index`` of a checkpoint into one safetensors file.

    :param checkpoint_dir: a plait checkpoint (its manifest and checksums are verified first) or a
        torch.distributed.checkpoint directory of model weights.
    :param output: the file to write (``*.safetensors``), or a directory to write ``model.safetensors`` in.
    :return: the file written.
    """
    import torch
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from plait import checkpoint
    from plait.checkpoint.default_state import model_file
    from plait.checkpoint.tensor_files import state_dict_to_safetensors
    from plait_fsdp.checkpoint import dcp_load, model_dir

    source = Path(checkpoint_dir)
    target = Path(output)
    if target.suffix != ".safetensors":
        target = target / "model.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    if (source / checkpoint.MANIFEST).is_file():
        checkpoint.verify(source)
        full = source / model_file(index)
        if not (source / model_dir(index)).is_dir() and full.is_file():
            shutil.copyfile(full, target)  # saved with FULL_STATE_DICT: already one file
            return target
        source = source / model_dir(index)
    if not (source / ".metadata").is_file():
        raise CheckpointError(
            f"{checkpoint_dir} is not a sharded checkpoint: expected a plait checkpoint holding "
            f"{model_dir(index)}/ or a torch.distributed.checkpoint directory with a .metadata file; "
            f"pass the directory save_state wrote"
        )
    metadata = FileSystemReader(str(source)).read_metadata()
    state = {
        key: torch.empty(entry.size, dtype=entry.properties.dtype)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }
    dcp_load(state, source, distributed=False)
    tensors, file_metadata = state_dict_to_safetensors(state)
    # Written beside the target and renamed: a reader never sees half a file.
    temporary = target.with_name(f".{target.name}.plait-tmp-{os.getpid()}")
    try:
        save_file(tensors, str(temporary), metadata=file_metadata)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return target
