"""The end of a torchrun benchmark worker: every rank's report gathered into rank 0's JSON file, then teardown."""

from __future__ import annotations

import json
from typing import Any

import torch.distributed as dist


def report_and_finish(report: dict[str, Any], out: str, accelerator: Any = None) -> None:
    """Gather ``report`` from every rank, write the list to ``out`` on rank 0, end ``accelerator``'s run
    (when a plait or Accelerate contender made one) and destroy the process group if it is still there."""
    every: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(every, report)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(every, f)
    if accelerator is not None:
        accelerator.end_training()
    if dist.is_initialized():
        dist.destroy_process_group()
