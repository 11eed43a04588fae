"""Worker run under valgrind's callgrind: one contender's training loop, its instructions counted.

``python _instructions.py CONTENDER MODEL ACCUMULATION EPOCHS`` builds the loop of
``_step_worker`` (raw, plait or accelerate), runs two warm-up epochs, then asks
callgrind (through ``callgrind_control``) to zero its counters, runs EPOCHS epochs
and dumps the counts. The runner reads the dump's ``summary:`` line: instructions
executed by those epochs only, start-up and warm-up excluded. Unlike time, the count
does not depend on what else the machine runs.
"""

from __future__ import annotations

import os
import subprocess
import sys


def main(contender: str, model_name: str, accumulation_text: str, epochs_text: str) -> None:
    accumulation, epochs = int(accumulation_text), int(epochs_text)
    import torch

    from _step_worker import build, prepared_epoch, raw_epoch

    torch.set_num_threads(1)
    model, optimizer, loader = build(model_name)
    if contender == "raw":
        epoch = raw_epoch(model, optimizer, loader, accumulation)
    else:
        epoch, loader = prepared_epoch(contender, model, optimizer, loader, accumulation)
    for _ in range(2):
        epoch()
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
    for _ in range(epochs):
        epoch()
    subprocess.run(["callgrind_control", "--dump=timed", pid], check=True, capture_output=True)
    print(f"@@steps {epochs * len(loader)}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
