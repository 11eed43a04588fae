"""Helpers shared by the zero test modules: an isolated environment and parameter comparisons."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

import pytest
import torch

#: Variables a launcher (torchrun, SLURM) sets; none may leak from the developer's shell into a test.
LAUNCHER_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "NODE_RANK",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS",
)


@pytest.fixture(scope="module", autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No PLAIT_*, SLURM_*, DS_* or launcher variable, and an empty XDG_CONFIG_HOME, for the whole module."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg")))
        for name in list(os.environ):
            if name.startswith(("PLAIT_", "SLURM_", "DS_")) or name in LAUNCHER_VARIABLES:
                monkeypatch.delenv(name)
        yield


def max_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def identical(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)
