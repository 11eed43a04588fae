"""Saves a checkpoint, then dies (SIGKILL-like os._exit) in the middle of overwriting it."""

from __future__ import annotations

import os
import sys

import torch

from plait import Accelerator


class DiesWhenSaved:
    def __init__(self) -> None:
        self.armed = False

    def state_dict(self) -> dict[str, int]:
        if self.armed:
            os._exit(9)  # the process vanishes mid-save: no exception handler, no cleanup
        return {"value": 1}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pass


directory = sys.argv[1]
accelerator = Accelerator()
model = accelerator.prepare(torch.nn.Linear(3, 3))
bomb = DiesWhenSaved()
accelerator.register_for_checkpointing(bomb)
with torch.no_grad():
    model.weight.fill_(1.0)
accelerator.save_state(directory)
with torch.no_grad():
    model.weight.fill_(2.0)
bomb.armed = True
accelerator.save_state(directory, overwrite=True)
