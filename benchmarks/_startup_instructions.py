"""Worker run under valgrind's callgrind: the instructions of one contender's imports after ``import torch``.

``python _startup_instructions.py CONTENDER`` imports torch, asks callgrind (through
``callgrind_control``) to zero its counters, runs the contender's imports of the
startup benchmark (``suite_core.STARTUP_IMPORTS``) and dumps the counts. The runner
reads the dump's ``summary:`` line: the steady figure behind the startup time, which
on a shared machine varies by tens of percent from one minute to the next.
"""

from __future__ import annotations

import os
import subprocess
import sys

IMPORTS = {
    "raw": "pass",
    "plait": "import plait; plait.Accelerator",
    "accelerate": "import accelerate; accelerate.Accelerator",
}


def main(contender: str) -> None:
    import torch  # noqa: F401  (counted before the counters are zeroed)

    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "--zero", pid], check=True, capture_output=True)
    exec(IMPORTS[contender], {})
    subprocess.run(["callgrind_control", "--dump=timed", pid], check=True, capture_output=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
