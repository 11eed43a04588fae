"""The ``xla:`` section, the launch flags, and the errors of an environment torch_xla cannot run in."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

pytest.importorskip("torch_xla", reason="the xla tests need torch_xla (the nox session `xla` installs it)")

from plait.errors import ConfigError
from plait_xla.options import XlaOptions

ROOT = Path(__file__).resolve().parents[2]


def test_section_values_and_defaults() -> None:
    assert XlaOptions.from_section({}) == XlaOptions(spmd=False, fsdp=False)
    assert XlaOptions.from_section({"spmd": "true", "fsdp": True}) == XlaOptions(spmd=True, fsdp=True)
    given = XlaOptions(spmd=True)
    assert XlaOptions.from_section(given) is given


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"spmdd": True}, ["unknown xla option 'spmdd'", "did you mean 'spmd'", "valid options: spmd, fsdp"]),
        ({"spmd": "maybe"}, ["spmd='maybe'", "expected true or false"]),
        ({"fsdp": True}, ["fsdp=true", "spmd is false", "--xla-spmd"]),
    ],
)
def test_bad_sections_are_named(section: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        XlaOptions.from_section(section)
    for word in words:
        assert word in str(caught.value)


def _other_torch_python() -> str | None:
    """An interpreter whose torch is not the one torch_xla was built for (the other nox sessions' torch 2.13)."""
    candidates = [os.environ.get("PLAIT_XLA_OTHER_PYTHON", ""), str(ROOT / ".nox/core/bin/python"),
                  str(ROOT / ".venv/bin/python")]
    for python in filter(None, candidates):
        if not Path(python).is_file():
            continue
        probe = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
        if probe.returncode == 0 and not probe.stdout.startswith(metadata.version("torch_xla")[:3]):
            return python
    return None


@pytest.fixture(scope="module")
def other_python() -> str:
    python = _other_torch_python()
    if python is None:
        pytest.skip("no interpreter with another torch here (run the nox session `core` first, or set PLAIT_XLA_OTHER_PYTHON)")
    return python


def test_missing_torch_xla_names_the_install_and_the_torch_it_needs(other_python: str) -> None:
    done = subprocess.run([other_python, "-c", "import plait_xla"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "packages/xla/src")})
    assert done.returncode == 1
    assert "MissingLibrary" in done.stderr and "pip install plait[xla]" in done.stderr
    assert "torch==2.9" in done.stderr and "this environment has torch 2." in done.stderr


def test_torch_xla_built_for_another_torch_names_both_versions(other_python: str, tmp_path: Path) -> None:
    """The real torch_xla of this environment, on the other interpreter's torch: its import fails with
    "undefined symbol", and loading the backend names both versions instead."""
    import torch_xla

    package = Path(torch_xla.__file__).parent
    info = next(package.parent.glob(f"torch_xla-{metadata.version('torch_xla')}.dist-info"))
    (tmp_path / "torch_xla").symlink_to(package)
    (tmp_path / info.name).symlink_to(info)
    for extension in package.parent.glob("_XLAC*.so"):  # torch_xla's compiled core, linked against its torch
        (tmp_path / extension.name).symlink_to(extension)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'packages/xla/src'}"}
    raw = subprocess.run([other_python, "-c", "import torch_xla"], capture_output=True, text=True, env=env)
    assert raw.returncode == 1 and "undefined symbol" in raw.stderr  # the error users meet
    for code in ("import plait_xla", "from plait_xla import runtime; runtime.import_torch_xla()"):
        done = subprocess.run([other_python, "-c", code], capture_output=True, text=True, env=env)
        assert done.returncode == 1 and "PluginError" in done.stderr, done.stderr[-3000:]
        assert f"torch_xla {metadata.version('torch_xla')}" in done.stderr and "this environment has torch 2." in done.stderr


def test_backend_is_found_and_listed() -> None:
    done = subprocess.run([sys.executable, "-c", "from plait.plugins import discovery; "
                           "print([i.status for i in discovery.list_plugins() if i.name == 'xla'])"],
                          capture_output=True, text=True)
    assert done.stdout.strip() == "['ok']", done.stderr
