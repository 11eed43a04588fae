"""Fixtures of the plait command's tests: a clean environment, and test plugins installed for real."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from cli_helpers import PLUGIN_PACKAGES

from plait.testing import install_plugins, isolate_environment


@pytest.fixture(autouse=True)
def clean_environment(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PLAIT_*, SLURM_* or launcher variable; empty config and HF homes. Returns the XDG config home."""
    home = tmp_path_factory.mktemp("home")
    isolate_environment(monkeypatch, home / "config", names=("CUDA_VISIBLE_DEVICES",))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return home / "config"


@pytest.fixture
def default_config(clean_environment: Path) -> Path:
    """Where ``plait config`` writes by default in this test."""
    return clean_environment / "plait" / "default_config.yaml"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """plait-stamp (adds `plait stamp`), plait-toy (a backend with flags, questions and its own launcher)
    and plait-broken (fails to import), pip-installed for real into one directory."""
    root = tmp_path_factory.mktemp("cli-plugins")
    names = ("plait-stamp", "plait-toy", "plait-broken")
    process = install_plugins([PLUGIN_PACKAGES / name for name in names], root / "site", root / "build")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, f"installing the test plugins failed:\n{output}"
    return root / "site"


@pytest.fixture
def no_workers_started(tmp_path: Path) -> Iterator[Path]:
    """A marker path the marker script would write: it must still be absent after a refused launch."""
    marker = tmp_path / "started"
    yield marker
    assert not marker.exists(), "a worker started although the launch was refused"
