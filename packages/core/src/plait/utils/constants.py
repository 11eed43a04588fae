"""HF Accelerate's file names (``accelerate.utils.constants``), with the same values.

plait's own checkpoints use :mod:`plait.checkpoint.default_state`'s names; these are the names of
HF-style weight files and of Accelerate's checkpoint files, for scripts that build paths with them.
"""

from __future__ import annotations

SCALER_NAME = "scaler.pt"
MODEL_NAME = "pytorch_model"
SAFE_MODEL_NAME = "model"
RNG_STATE_NAME = "random_states"
OPTIMIZER_NAME = "optimizer"
SCHEDULER_NAME = "scheduler"
SAMPLER_NAME = "sampler"
PROFILE_PATTERN_NAME = "profile_{suffix}.json"
WEIGHTS_NAME = f"{MODEL_NAME}.bin"
WEIGHTS_PATTERN_NAME = "pytorch_model{suffix}.bin"
WEIGHTS_INDEX_NAME = f"{WEIGHTS_NAME}.index.json"
SAFE_WEIGHTS_NAME = f"{SAFE_MODEL_NAME}.safetensors"
SAFE_WEIGHTS_PATTERN_NAME = "model{suffix}.safetensors"
SAFE_WEIGHTS_INDEX_NAME = f"{SAFE_WEIGHTS_NAME}.index.json"
#: The folder of a sharded (torch.distributed.checkpoint) model: ``pytorch_model_fsdp_0`` for the first.
FSDP_MODEL_NAME = "pytorch_model_fsdp"
