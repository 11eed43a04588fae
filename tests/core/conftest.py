"""Fixtures of the core tests: an isolated config environment, real installed plugins, a hook-call recorder.

* Every test runs with ``XDG_CONFIG_HOME`` in a temporary directory and no
  ``PLAIT_*`` variable set, so no test reads the developer's own config.
* The distributions under ``plugin_packages/`` are built and pip-installed once per
  session into two target directories (``good``: stamp, toy, toylog; ``bad``:
  broken, typo). A test sees them only while it uses the ``installed_plugins`` or
  ``broken_plugins`` fixture, which put the directory on ``sys.path``; other tests
  never load them.
* Every :class:`pluggy.PluginManager` made by :func:`plait.plugins.new_manager`
  during the session records the hooks it calls (and ``plait.tracking.call_each``
  the tracker hooks it fans out); ``test_hookspecs.py`` checks at the end of a
  full run that every hook spec was called.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plait import plugins as plugins_module
from plait.testing import install_plugins

PACKAGES = Path(__file__).parent / "plugin_packages"
#: Which test distributions go into which installed site.
SITES = {
    "good": ("plait-stamp", "plait-toy", "plait-toylog"),
    "bad": ("plait-broken", "plait-typo"),
}
#: Top-level modules of the test distributions (forgotten between tests so that imports can be observed).
TEST_MODULES = ("plait_stamp", "plait_toy", "plait_toy.precision", "plait_toylog", "plait_broken", "plait_typo")

RUNS_LAST = "runs_last"

#: Hook names called on any plugin manager during this session.
_CALLED_HOOKS: set[str] = set()
#: Tests deselected (``-k``, ``-m``, ``--deselect``, ``--lf``...) during this session.
_DESELECTED: list[str] = []


# --------------------------------------------------------------------------- #
# pytest hooks: the hook-call recorder, ordering and selection bookkeeping for test_hookspecs.py
# --------------------------------------------------------------------------- #


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{RUNS_LAST}: run after every other test of the session")
    # Installed here, before any test module is imported, so that a test doing
    # `from plait.plugins import new_manager` gets the recording one too.
    _install_hook_recorder()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _recorder_installed
    _RECORDER_PATCHES.undo()
    _recorder_installed = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    last = [item for item in items if item.get_closest_marker(RUNS_LAST)]
    if last:
        items[:] = [item for item in items if not item.get_closest_marker(RUNS_LAST)] + last


def pytest_deselected(items: list[pytest.Item]) -> None:
    _DESELECTED.extend(item.nodeid for item in items)


@pytest.fixture
def deselected_tests() -> list[str]:
    """Node ids deselected in this session (by ``-k``, ``-m``, ``--deselect``...)."""
    return _DESELECTED


@pytest.fixture(scope="session")
def hook_calls() -> set[str]:
    """The names of every hook called on a plait plugin manager so far in this session."""
    return _CALLED_HOOKS


_RECORDER_PATCHES = pytest.MonkeyPatch()
_recorder_installed = False


def _install_hook_recorder() -> None:
    """Record the name of every hook called during the session.

    Each manager made by ``plait.plugins.new_manager`` gets pluggy's hook-call
    monitoring. Tracker hooks are fanned out by ``plait.tracking.call_each``, one
    implementation at a time (so that one failing tracker stops no other), which
    bypasses the manager's call path: that function is wrapped as well, wherever
    a plait module bound it.
    """
    global _recorder_installed
    if _recorder_installed:
        return
    _recorder_installed = True
    import plait.accelerator  # binds call_each, so that it is wrapped there too
    import plait.plugins.manager
    import plait.tracking

    def before(hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        _CALLED_HOOKS.add(hook_name)

    def after(outcome: Any, hook_name: str, hook_impls: Any, kwargs: Any) -> None:
        pass

    original_new_manager = plait.plugins.manager.new_manager

    def recording_new_manager() -> Any:
        pm = original_new_manager()
        pm.add_hookcall_monitoring(before, after)
        return pm

    original_call_each = plait.tracking.call_each

    def recording_call_each(pm: Any, hook_name: str, *args: Any, **kwargs: Any) -> None:
        _CALLED_HOOKS.add(hook_name)
        original_call_each(pm, hook_name, *args, **kwargs)

    # Where the Accelerator finds it (plait.plugins.manager), and where tests import it from (plait.plugins).
    _RECORDER_PATCHES.setattr(plait.plugins.manager, "new_manager", recording_new_manager)
    _RECORDER_PATCHES.setattr(plugins_module, "new_manager", recording_new_manager)
    for name, module in list(sys.modules.items()):
        if name.split(".")[0] == "plait" and getattr(module, "call_each", None) is original_call_each:
            _RECORDER_PATCHES.setattr(module, "call_each", recording_call_each)


# --------------------------------------------------------------------------- #
# isolation from the developer's environment
# --------------------------------------------------------------------------- #


@pytest.fixture(autouse=True)
def isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``XDG_CONFIG_HOME``, no ``PLAIT_*`` variable and no launcher's variables (torchrun's or
    SLURM's: core reads them); returns the default config file's path."""
    home = tmp_path_factory.mktemp("xdg")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in list(os.environ):
        if name.startswith(("PLAIT_", "SLURM_")) or name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            monkeypatch.delenv(name)
    return home / "plait" / "default_config.yaml"


# --------------------------------------------------------------------------- #
# real installed plugins
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="session")
def plugin_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test distributions, pip-installed into one target directory per site (``good``, ``bad``)."""
    root = tmp_path_factory.mktemp("plugin-sites")
    targets = {site: root / site for site in SITES}
    running = {
        site: install_plugins([PACKAGES / name for name in SITES[site]], targets[site], root / f"{site}-build")
        for site in SITES
    }
    for site, process in running.items():
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, (
            f"pip install of the {site} test plugins failed (it builds them offline, with the setuptools "
            f"of this environment: `pip install setuptools` if it is missing):\n{output}"
        )
    return targets


def _forget_test_modules() -> None:
    for module in TEST_MODULES:
        sys.modules.pop(module, None)


def _use_site(site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    _forget_test_modules()
    monkeypatch.syspath_prepend(str(site))  # also invalidates importlib's caches
    yield site
    # monkeypatch takes the directory off sys.path after this; forget what was imported from it.
    _forget_test_modules()
    sys.path_importer_cache.pop(str(site), None)
    importlib.invalidate_caches()


@pytest.fixture
def installed_plugins(plugin_sites: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """plait-stamp (extension), plait-toy (backend) and plait-toylog (tracker) installed for this test."""
    yield from _use_site(plugin_sites["good"], monkeypatch)


@pytest.fixture
def broken_plugins(plugin_sites: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """plait-broken (fails to import) and plait-typo (misspelled hook) installed for this test."""
    yield from _use_site(plugin_sites["bad"], monkeypatch)


# --------------------------------------------------------------------------- #
# a small training problem
# --------------------------------------------------------------------------- #


@pytest.fixture
def regression() -> Any:
    """A small regression problem (y = 3x - 1 + noise), the same on every call, and the loop that fits it."""
    import torch

    class Problem:
        def make(self, lr: float = 0.1, batch_size: int = 4) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
            """A fresh (model, optimizer, dataloader), identical each call."""
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(32, 1, generator=generator)
            y = 3 * x - 1 + 0.01 * torch.randn(32, 1, generator=generator)
            torch.manual_seed(0)
            model = torch.nn.Linear(1, 1)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr)
            loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)
            return model, optimizer, loader

        def fit(self, accelerator: Any, lr: float = 0.1, epochs: int = 2) -> tuple[torch.nn.Module, list[float]]:
            """Train as a user would with ``accelerator``; returns the prepared model and every step's loss."""
            model, optimizer, loader = accelerator.prepare(*self.make(lr))
            losses = []
            for _ in range(epochs):
                for x, y in loader:
                    with accelerator.accumulate(model):
                        loss = torch.nn.functional.mse_loss(model(x), y)
                        accelerator.backward(loss)
                        optimizer.step()
                        optimizer.zero_grad()
                    losses.append(loss.item())
            return model, losses

    return Problem()
