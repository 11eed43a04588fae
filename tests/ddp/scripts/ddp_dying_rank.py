"""Process 1 vanishes (os._exit) after the group is formed; process 0 then blocks in a collective.

The job must end with an error, not hang: under torchrun the agent stops the
survivors; without a launcher the collective fails (the peer's connection closes,
or PLAIT_PROCESS_GROUP_TIMEOUT passes).

With the argument ``stall`` process 1 stays alive but never joins the collective
(stuck elsewhere): only the process-group timeout can end process 0's wait. With
``handler`` the timeout is HF Accelerate's ``InitProcessGroupKwargs(timeout=3 s)``.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import torch

from plait import Accelerator, InitProcessGroupKwargs

handlers = [InitProcessGroupKwargs(backend="gloo", timeout=timedelta(seconds=3))] if "handler" in sys.argv else []
accelerator = Accelerator(kwargs_handlers=handlers)
accelerator.wait_for_everyone()
if accelerator.process_index == 1:
    if "stall" in sys.argv:
        time.sleep(120)  # the test kills it once process 0 has failed
    time.sleep(0.5)  # let process 0 enter the collective first
    os._exit(1)
print(f"process {accelerator.process_index} enters a collective", flush=True)
accelerator.reduce(torch.ones(3))
accelerator.wait_for_everyone()
print("UNREACHABLE: the collective returned although process 1 is gone", flush=True)
