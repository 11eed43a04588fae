"""The first start of the zero backend on CPU says that DeepSpeed compiles its CPU op, once, instead of a silent minute.

Costs one real compilation of DeepSpeed's shared-memory op into an empty TORCH_EXTENSIONS_DIR (30-90 s on 2 cores)
plus a second, quiet start from that cache (about 15 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from plait.testing import LAUNCHER_VARIABLES

MESSAGE = "plait zero: DeepSpeed is compiling its CPU op deepspeed_shm_comm"
#: Linear regression under ZeRO-2 on one process, as `python train.py`; prints its first and last loss as JSON.
SCRIPT = """
import json, torch
from plait import Accelerator
torch.manual_seed(0)
accelerator = Accelerator(backend="zero", backend_options={"stage": 2}, cpu=True)
x = torch.randn(64, 4)
y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.25
model = torch.nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
model, optimizer = accelerator.prepare(model, optimizer)
losses = []
for _ in range(40):
    loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()
    losses.append(loss.item())
print(json.dumps({"first": losses[0], "last": losses[-1]}))
"""


def run(script: Path, extensions: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    env["TORCH_EXTENSIONS_DIR"] = str(extensions)
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_the_compilation_is_announced_once_when_the_cache_is_empty_and_not_once_built(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    extensions = tmp_path / "torch_extensions"
    extensions.mkdir()

    first = run(script, extensions)
    assert first.stderr.count(MESSAGE) == 1, first.stderr[-4000:]
    assert f"(cached in {extensions / 'deepspeed_shm_comm'})" in first.stderr
    assert (extensions / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file()  # the op it announced was built

    second = run(script, extensions)
    assert MESSAGE not in second.stderr and "compiling" not in second.stderr

    for result in (first, second):  # and both trained: the loss fell by more than 100 times
        losses = json.loads(result.stdout.strip().splitlines()[-1])
        assert losses["last"] < losses["first"] / 100, losses
