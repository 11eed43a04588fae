"""The process environment is torn down exactly once: by end_training, or at interpreter exit."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import plait

class Teardown:
    @plait.hookimpl
    def plait_shutdown(self, accelerator):
        print("shutdown", accelerator.backend, flush=True)
        return True

accelerator = plait.Accelerator(plugins=[Teardown()])
if {end_training}:
    accelerator.end_training()
    accelerator.end_training()
print("script done", flush=True)
"""


@pytest.mark.parametrize("end_training", [True, False], ids=["end_training", "at-exit"])
def test_shutdown_runs_once(end_training: bool) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(end_training=end_training)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    lines = result.stdout.splitlines()
    assert lines.count("shutdown single") == 1
    done = lines.index("script done")
    assert (lines.index("shutdown single") < done) == end_training
