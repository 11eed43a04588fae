"""A worker that saves when preempted: ``python preempted.py DIR [SECONDS]``.

It traps SIGTERM, then writes DIR/<rank>.pid and waits. On SIGTERM it "saves" for SECONDS (default 1), writes
DIR/<rank>.saved and exits with 143 (128 + SIGTERM), as a worker that checkpoints on preemption does.
"""

import os
import signal
import sys
import time
from pathlib import Path

out = Path(sys.argv[1])
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
rank = os.environ["RANK"]


def saved(signum, frame):  # type: ignore[no-untyped-def]
    time.sleep(seconds)
    (out / f"{rank}.saved").write_text(str(time.time()))
    sys.stdout.flush()
    os._exit(128 + signum)


signal.signal(signal.SIGTERM, saved)
pid_file = out / f"{rank}.pid"
pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
pid_file.with_suffix(".tmp").rename(pid_file)
while True:
    time.sleep(0.1)
