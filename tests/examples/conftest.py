"""Fixtures of the example tests: no PLAIT_*, SLURM_*, ACCELERATE_*, DS_* or launcher variable, an empty config
home, and the Hugging Face hub offline (the transformers examples build their models from configs)."""

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
    """Session-scoped, so that the module-scoped runs see it too."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, tmp_path_factory.mktemp("xdg"), ("PLAIT_", "SLURM_", "ACCELERATE_", "DS_"),
                            names=("CUDA_VISIBLE_DEVICES",))
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        yield
