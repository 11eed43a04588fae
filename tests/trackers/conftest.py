"""Fixtures of the tracker tests: every library offline, every file in a temporary directory.

Each test runs in its own temporary working directory with no ``PLAIT_*``
variable, an empty ``XDG_CONFIG_HOME``, and the trackers' libraries set up the
way a user runs them without a network: ``WANDB_MODE=offline`` and Comet's offline
mode (``COMET_START_ONLINE=0``), with Comet's environment probing (host name,
IP address, cloud metadata) and error reporting off. TensorBoard only writes
files. The settings are environment variables, so the worker processes of the
two-process tests inherit them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:  # trackers_readers, trackers_workers
    sys.path.insert(0, str(HERE))

OFFLINE = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_CONSOLE": "off",
    "WANDB_DISABLE_GIT": "true",
    "WANDB_DISABLE_CODE": "true",
    "COMET_START_ONLINE": "0",
    "COMET_AUTO_LOG_ENV_DETAILS": "0",
    "COMET_AUTO_LOG_GIT_METADATA": "0",
    "COMET_AUTO_LOG_GIT_PATCH": "0",
    "COMET_AUTO_LOG_CODE": "0",
    "COMET_ERROR_TRACKING_ENABLE": "0",
    "COMET_DISABLE_ANNOUNCEMENT": "1",
    "COMET_DISPLAY_SUMMARY_LEVEL": "0",
}


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh working directory with every tracker offline; returns the directory."""
    for name in list(os.environ):
        if name.startswith(("PLAIT_", "WANDB_", "COMET_")):
            monkeypatch.delenv(name)
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    monkeypatch.setenv("COMET_CONFIG", str(home / "comet.config"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work
