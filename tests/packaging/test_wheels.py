"""The built distributions, installed as a user installs them: fresh virtualenvs, `pip install --find-links dist`.

`nox -s build` fills dist/ with an sdist and a wheel of every packages/*/pyproject.toml and then runs these tests.
Every pip call uses constraints.txt, so torch is the local 2.13.0 CPU wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
CONSTRAINTS = ROOT / "constraints.txt"
#: A requirement on one of plait's distributions: ``plait-trackers[wandb]==0.1.0``.
PLAIT_REQUIREMENT = re.compile(r"^(?P<name>plait(-[a-z0-9]+)?)(\[[^\]]*\])?\s*(?P<spec>.*)$")


def projects(root: Path) -> dict[Path, dict[str, Any]]:
    """Every ``packages/*/pyproject.toml`` under ``root``, read."""
    return {path: tomllib.loads(path.read_text(encoding="utf-8")) for path in sorted(root.glob("packages/*/pyproject.toml"))}


def version_problems(root: Path) -> list[str]:
    """What breaks the single shared version under ``root``: a package of another version than the others, and
    a requirement between plait's packages that is not ``==`` that version."""
    read = projects(root)
    versions = {path: data["project"]["version"] for path, data in read.items()}
    shared = max(set(versions.values()), key=list(versions.values()).count)
    problems = [f"{path.relative_to(root)}: version {v!r}, the others have {shared!r}" for path, v in versions.items()
                if v != shared]
    for path, data in read.items():
        project = data["project"]
        requirements = list(project.get("dependencies", []))
        for extra in project.get("optional-dependencies", {}).values():
            requirements += extra
        for requirement in requirements:
            match = PLAIT_REQUIREMENT.match(requirement)
            if match and match["spec"].replace(" ", "") != f"=={shared}":
                problems.append(f"{path.relative_to(root)}: {requirement!r} does not pin =={shared}")
    return problems


def shared_version() -> str:
    (version,) = {data["project"]["version"] for data in projects(ROOT).values()}
    return version


def distribution_names() -> list[str]:
    return [data["project"]["name"] for data in projects(ROOT).values()]


def test_every_package_and_every_pin_between_them_is_the_one_shared_version() -> None:
    assert version_problems(ROOT) == []
    assert len(distribution_names()) >= 6, "packages/*/pyproject.toml were not found"


def test_a_package_of_another_version_or_a_loose_pin_is_named(tmp_path: Path) -> None:
    for path in projects(ROOT):
        target = tmp_path / path.relative_to(ROOT)
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
    fsdp = tmp_path / "packages/fsdp/pyproject.toml"
    fsdp.write_text(fsdp.read_text().replace('version = "', 'version = "9', 1))
    cli = tmp_path / "packages/cli/pyproject.toml"
    cli.write_text(re.sub(r'"plait==[^"]+"', '"plait>=0.1"', cli.read_text(), count=1))
    problems = version_problems(tmp_path)
    assert len(problems) == 2, problems
    assert any(p.startswith("packages/fsdp/pyproject.toml: version '9") for p in problems)
    assert any("'plait>=0.1' does not pin ==" in p for p in problems)


@pytest.fixture(scope="module")
def dist() -> Path:
    """dist/, with an sdist and a wheel of every package at the shared version."""
    version = shared_version()
    missing = []
    for name in distribution_names():
        stem = name.replace("-", "_")
        for artifact in (f"{stem}-{version}.tar.gz", f"{stem}-{version}-py3-none-any.whl"):
            if not (DIST / artifact).is_file():
                missing.append(artifact)
    if missing:
        pytest.fail(f"dist/ lacks {', '.join(missing)}: build them first with `nox -s build`")
    return DIST


def test_every_artifact_carries_the_shared_version_in_its_metadata(dist: Path) -> None:
    import tarfile
    import zipfile

    version = shared_version()
    for name in distribution_names():
        stem = name.replace("-", "_")
        with zipfile.ZipFile(dist / f"{stem}-{version}-py3-none-any.whl") as wheel:
            metadata = wheel.read(f"{stem}-{version}.dist-info/METADATA").decode()
        with tarfile.open(dist / f"{stem}-{version}.tar.gz") as sdist:
            member = sdist.extractfile(f"{stem}-{version}/PKG-INFO")
            assert member is not None
            pkg_info = member.read().decode()
        for text in (metadata, pkg_info):
            assert f"\nName: {name}\n" in text and f"\nVersion: {version}\n" in text
            pins = re.findall(r"^Requires-Dist: (plait[^\s;\[=]*)(?:\[[^\]]*\])?\s*\(?([^;)\n]*)", text, re.M)
            assert all(spec.replace(" ", "") == f"=={version}" for _, spec in pins), pins


class Environment:
    """A fresh virtualenv: its pip, its distributions, its python."""

    def __init__(self, path: Path) -> None:
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
        self.python = str(path / "bin" / "python")
        self.env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}

    def run(self, *args: str, timeout: float = 600) -> str:
        process = subprocess.run([self.python, *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                                 cwd=DIST)
        assert process.returncode == 0, f"{args} failed:\n{process.stdout}\n{process.stderr}"
        return process.stdout

    def pip(self, *args: str) -> str:
        return self.run("-m", "pip", "--disable-pip-version-check", *args, "--find-links", str(DIST), "-c",
                        str(CONSTRAINTS))

    def distributions(self) -> dict[str, str]:
        listed = json.loads(self.run("-m", "pip", "--disable-pip-version-check", "list", "--format", "json"))
        return {canonical(d["name"]): d["version"] for d in listed}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def fsdp_wandb(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Environment, dict[str, str]]:
    """A fresh virtualenv after `pip install --find-links dist -c constraints.txt 'plait[fsdp,wandb]'`, and the
    distributions that install added (name -> version)."""
    environment = Environment(tmp_path_factory.mktemp("fsdp-wandb") / "venv")
    before = environment.distributions()
    environment.pip("install", "plait[fsdp,wandb]")
    after = environment.distributions()
    return environment, {name: v for name, v in after.items() if before.get(name) != v}


def test_plait_fsdp_wandb_installs_exactly_plait_plait_fsdp_plait_trackers_and_wandb(fsdp_wandb: tuple[Environment, dict[str, str]]) -> None:
    _, added = fsdp_wandb
    version = shared_version()
    assert {name: v for name, v in added.items() if name.startswith("plait")} == {
        "plait": version, "plait-fsdp": version, "plait-trackers": version}
    assert "wandb" in added and added["torch"].startswith("2.13.0")
    for absent in ("plait-ddp", "plait-zero", "plait-cli", "plait-xla", "deepspeed", "tensorboard", "comet-ml",
                   "torch-xla"):
        assert absent not in added


def test_the_installed_wheels_provide_the_fsdp_backend_and_the_wandb_tracker(fsdp_wandb: tuple[Environment, dict[str, str]]) -> None:
    environment, _ = fsdp_wandb
    report = json.loads(environment.run("-c", """
import json
from plait.plugins import TRACKERS_GROUP, installed_backends, selection_error
import plait, plait_fsdp, plait_trackers
print(json.dumps({"backends": list(installed_backends()), "wandb": selection_error(TRACKERS_GROUP, "wandb"),
                  "plait": plait.__file__, "fsdp": plait_fsdp.__file__}))
"""))
    assert report["backends"] == ["single", "fsdp"] and report["wandb"] is None
    assert "site-packages" in report["plait"] and "site-packages" in report["fsdp"]


def test_plait_all_resolves_to_every_plait_package_though_torch_xla_is_not_built_for_this_torch(dist: Path) -> None:
    """`pip install --dry-run 'plait[all]'` resolves with constraints.txt, every plait package at the shared version.

    What that resolution means: torch_xla declares no torch requirement, so pip pairs the newest torch_xla with
    constraints.txt's torch 2.13.0; a torch_xla release only runs with the torch of its own release (the xla
    session installs that pair from constraints-xla.txt). The check reads only metadata: torch is the local wheel,
    torch_xla's wheel is read for its metadata (about 80 MB), nothing is installed.
    """
    report_path = dist.parent / "build-plait-all-report.json"
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "--disable-pip-version-check", "install", "--dry-run", "--ignore-installed",
             "--quiet", "--report", str(report_path), "--find-links", str(dist), "-c", str(CONSTRAINTS), "plait[all]"],
            check=True, timeout=600, env={**os.environ, "PIP_CONSTRAINT": str(CONSTRAINTS)},
        )
        report = json.loads(report_path.read_text())
    finally:
        report_path.unlink(missing_ok=True)
    resolved = {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in report["install"]}
    version = shared_version()
    assert {name: v for name, v in resolved.items() if name.startswith("plait")} == {
        canonical(name): version for name in distribution_names()}
    assert resolved["torch"].startswith("2.13.0")
    for library in ("deepspeed", "wandb", "tensorboard", "comet-ml", "torch-xla"):
        assert library in resolved
    xla_release, torch_release = resolved["torch-xla"].split(".")[:2], resolved["torch"].split(".")[:2]
    print(f"plait[all] under constraints.txt: torch {resolved['torch']}, torch_xla {resolved['torch-xla']}"
          + ("" if xla_release == torch_release else " (a torch_xla of another torch release: not importable together)"))


HINTS = """
import json
from plait.plugins import BACKENDS_GROUP, selection_error
from plait.plugins.install_commands import checkout_root, install_hint
from plait_trackers.base import require_library
try:
    require_library("tensorboard", "tensorboard", "tensorboard")
except ModuleNotFoundError as missing:
    tracker, needs = str(missing), missing.install
print(json.dumps({"checkout": str(checkout_root()), "ddp": install_hint("ddp"), "tracker": tracker, "needs": needs,
                  "zero": selection_error(BACKENDS_GROUP, "zero")}))
"""


def test_install_hints_give_the_checkout_s_command_only_when_plait_runs_from_a_checkout(fsdp_wandb: tuple[Environment, dict[str, str]]) -> None:
    environment, _ = fsdp_wandb
    wheels = json.loads(environment.run("-c", HINTS))
    environment.env["PYTHONPATH"] = str(ROOT / "packages" / "core" / "src")  # the checkout's plait over the wheel's
    try:
        checkout = json.loads(environment.run("-c", HINTS))
    finally:
        del environment.env["PYTHONPATH"]

    assert wheels["checkout"] == "None" and checkout["checkout"] == str(ROOT)
    assert wheels["ddp"] == "pip install plait[ddp]"
    assert checkout["ddp"] == f"pip install plait[ddp] (from the checkout {ROOT}: pip install -c constraints.txt -e packages/ddp)"
    assert wheels["tracker"].endswith("which is not installed: pip install plait[tensorboard]")
    assert checkout["tracker"].endswith(
        f"which is not installed: pip install plait[tensorboard] (from the checkout {ROOT}: pip install -c "
        f"constraints.txt -e packages/trackers[tensorboard])")
    assert wheels["needs"] == checkout["needs"] == "pip install plait[tensorboard]"  # `plait plugins`' short form
    assert wheels["zero"].endswith("(installed backends: single, fsdp)")
    assert checkout["zero"].endswith(
        f"(installed backends: single, fsdp); from the checkout {ROOT}: pip install -c constraints.txt -e packages/zero")
