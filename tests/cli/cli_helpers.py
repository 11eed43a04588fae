"""Helpers of the plait command's tests: run the installed console script in a clean environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from plait.testing import free_port  # noqa: F401  (the tests import it from here)

HERE = Path(__file__).parent
SCRIPTS = HERE / "scripts"
PLUGIN_PACKAGES = HERE.parent / "core" / "plugin_packages"
PLAIT = str(Path(sys.executable).with_name("plait"))


def plait_env(extra: Mapping[str, str] | None = None, site: Path | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


def plait(
    *args: str, env: Mapping[str, str] | None = None, site: Path | None = None, input: str | None = None,
    timeout: float = 300, cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``plait`` console script; output captured as text."""
    return subprocess.run(
        [PLAIT, *args], env=plait_env(env, site), input=input, capture_output=True, text=True, timeout=timeout,
        cwd=cwd,
    )


def start_plait(*args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([PLAIT, *args], env=plait_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def alive(pid: int) -> bool:
    """Whether process ``pid`` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))
