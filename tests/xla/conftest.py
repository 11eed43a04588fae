"""Fixtures of the xla tests: XLA's CPU device, no PLAIT_*, SLURM_* or launcher variable, an empty config home.

Each test module is skipped where torch_xla is not installed (every session but ``xla``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from plait.testing import isolate_environment

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Session-scoped, so that the module-scoped workers see it too."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, tmp_path_factory.mktemp("xdg"), ("PLAIT_", "SLURM_", "ACCELERATE_"),
                            ("CPU_NUM_DEVICES", "XLA_USE_BF16"))
        monkeypatch.setenv("PJRT_DEVICE", "CPU")
        yield
