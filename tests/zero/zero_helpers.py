"""Helpers shared by the zero test modules: an isolated environment and parameter comparisons."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from plait.testing import identical, isolate_environment, max_diff

__all__ = ["clean_environment", "identical", "max_diff"]


@pytest.fixture(scope="module", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No PLAIT_*, SLURM_*, DS_* or launcher variable, and an empty XDG_CONFIG_HOME, for the whole module."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        isolate_environment(monkeypatch, tmp_path_factory.mktemp("xdg"), ("PLAIT_", "SLURM_", "DS_"))
        yield
