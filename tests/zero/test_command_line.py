"""The zero backend through the real `plait` command: a checked run, its launch flags, a refused combination."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLAIT = str(Path(sys.executable).with_name("plait"))


def _plait(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "SLURM_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return subprocess.run([PLAIT, *args], env=env, capture_output=True, text=True, timeout=600)


def test_plait_test_passes_with_zero_on_two_processes_with_accumulation(tmp_path):
    result = _plait(tmp_path, "test", "--backend", "zero", "--num-processes", "2", "--gradient-accumulation-steps", "2")

    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "backend zero" in result.stdout and "PASS: 2 process(es)" in result.stdout


def test_zero_launch_flags_reach_the_workers_and_bad_combinations_are_refused_first(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import sys\nfrom plait import Accelerator\n"
        "a = Accelerator()\n"
        "if a.is_main_process:\n"
        "    o = a.backend_options\n"
        "    open(sys.argv[1], 'w').write(repr((a.backend, o.stage, o.gradient_clipping)))\n"
    )
    out = tmp_path / "out.txt"
    result = _plait(tmp_path, "launch", "--num-processes", "2", "--backend", "zero", "--zero-stage", "3",
                    "--zero-gradient-clipping", "0.5", str(script), str(out))
    assert result.returncode == 0, result.stderr[-4000:]
    assert out.read_text() == "('zero', 3, 0.5)"

    result = _plait(tmp_path, "launch", "--num-processes", "2", "--backend", "zero", "--zero-stage", "2",
                    "--zero-offload-param-device", "cpu", str(script), str(out))
    assert result.returncode == 2
    assert "nothing was started" in result.stderr and "stage" in result.stderr
