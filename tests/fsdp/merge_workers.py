"""Worker of test_merge_weights.py, run on 2 real processes by ``plait.testing.run_processes`` (a plain
module: each worker re-imports its function from this file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsdp_workers as W


def sharded_save_worker(directory: str) -> dict[str, Any]:
    """Train FSDP2 for a few steps, save it three ways, merge inside the run; return the full weights."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    from plait.utils import merge_fsdp_weights

    root = Path(directory)
    acc = W._fsdp()
    model, _, _ = W.run(acc, W.make("transformer"), steps=4)
    acc.save_state(str(root / "plait"))  # sharded: pytorch_model_fsdp_0/ with one shard per process
    # HF Accelerate's layout: {"model": state_dict} of DTensor shards in pytorch_model_fsdp_0/.
    dcp.save({"model": get_model_state_dict(model)}, checkpoint_id=str(root / "accelerate" / "pytorch_model_fsdp_0"))
    # Every process calls it; the main process writes, the others wait for the file.
    written = merge_fsdp_weights(str(root / "plait"), str(root / "merged_in_run"))
    out = {"full": W.consolidated(acc, model), "exists_after_return": written.is_file(),
           "sharded": [type(p).__name__ == "DTensor" for p in model.parameters()]}
    acc.end_training()
    return out
