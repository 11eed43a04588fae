"""The fsdp backend through the real `plait` command: a checked run, and its launch flags reaching the workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLAIT = str(Path(sys.executable).with_name("plait"))


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLAIT_", "SLURM_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    return env


def test_plait_test_passes_with_fsdp_on_two_processes_with_accumulation(tmp_path):
    result = subprocess.run(
        [PLAIT, "test", "--backend", "fsdp", "--num-processes", "2", "--gradient-accumulation-steps", "2"],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "backend fsdp" in result.stdout and "PASS: 2 process(es)" in result.stdout


def test_fsdp_launch_flags_reach_the_workers_options(tmp_path):
    script = tmp_path / "show.py"
    script.write_text(
        "import sys\nfrom plait import Accelerator\n"
        "a = Accelerator()\n"
        "if a.is_main_process:\n"
        "    open(sys.argv[1], 'w').write(repr((a.backend, a.backend_options.reshard_after_forward, "
        "a.backend_options.min_num_params)))\n"
    )
    out = tmp_path / "out.txt"
    result = subprocess.run(
        [PLAIT, "launch", "--num-processes", "2", "--backend", "fsdp", "--fsdp-no-reshard-after-forward",
         "--fsdp-min-num-params", "1000", str(script), str(out)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )

    assert result.returncode == 0, result.stderr[-4000:]
    assert out.read_text() == "('fsdp', False, 1000)"

    result = subprocess.run(
        [PLAIT, "launch", "--num-processes", "2", "--backend", "fsdp", "--fsdp-min-num-params", "1000",
         "--fsdp-transformer-layer-cls-to-wrap", "Block", str(script), str(out)],
        env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2  # options that cannot go together, refused before any process starts
    assert "nothing was started" in result.stderr
