"""``python plain_python.py OUT``: the zero backend started the way a user starts a script, with no launcher.

DeepSpeed's engine asserts that a launcher set ``LOCAL_RANK``; plait runs the script as a process group of
one. Writes the trained parameters and the number of processes to OUT (JSON).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zero_workers as W

if __name__ == "__main__":
    run = W.train("zero", options={"stage": 2}, batch=2 * W.BATCH)
    params = {name: value.tolist() for name, value in run["params"].items()}
    Path(sys.argv[1]).write_text(json.dumps({"params": params, "type": run["type"]}), encoding="utf-8")
