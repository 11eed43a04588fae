"""The shape ARCHITECTURE.md promises, checked: small modules, one meaning per module name, backends of one
shape, no module reading the Accelerator's private state, the module names kept for HF Accelerate's, and
an Accelerator import that leaves the machinery of saving and of dataloaders for their first use."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "packages").glob("*/src/*"))
MODULES = sorted(path for source in SOURCES for path in source.rglob("*.py"))
#: Backend packages of this repository, and the modules every one of them has.
BACKENDS = ("plait_ddp", "plait_fsdp", "plait_zero", "plait_xla")
BACKEND_SHAPE = ("__init__.py", "options.py", "cli.py")
#: Names a backend package may share with another backend, because they mean the same in each.
SHARED_BY_BACKENDS = {"options.py", "cli.py", "checkpoint.py"}


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_sources_are_found():
    assert {source.name for source in SOURCES} >= {"plait", *BACKENDS, "plait_trackers", "plait_cli"}
    assert len(MODULES) > 60


def test_no_module_is_over_400_lines_except_the_hook_manual():
    long = {_relative(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > 400}
    assert set(long) <= {"packages/core/src/plait/hookspecs.py"}, long


def test_the_accelerator_is_at_most_300_lines():
    assert len((ROOT / "packages/core/src/plait/accelerator.py").read_text().splitlines()) <= 300


def test_no_two_modules_share_a_name_with_different_meanings():
    by_name: dict[str, list[Path]] = defaultdict(list)
    for path in MODULES:
        if path.name != "__init__.py":
            by_name[path.name].append(path)
    clashes = {}
    for name, paths in by_name.items():
        packages = {p.relative_to(ROOT / "packages").parts[2] for p in paths}
        if len(paths) > 1 and not (name in SHARED_BY_BACKENDS and packages <= set(BACKENDS)):
            clashes[name] = [_relative(p) for p in paths]
    assert not clashes


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_has_the_same_shape(backend):
    [package] = [source for source in SOURCES if source.name == backend]
    assert {p.name for p in package.glob("*.py")} >= set(BACKEND_SHAPE)
    table = (package / "__init__.py").read_text()
    assert "@hookimpl" in table and "def plait_backend_options" in table


PRIVATE = re.compile(r"\baccelerator\._[a-z]")


def test_no_module_reads_the_accelerator_s_private_state():
    readers = [
        f"{_relative(p)}:{i}" for p in MODULES if p.name != "accelerator.py"
        for i, line in enumerate(p.read_text().splitlines(), 1) if PRIVATE.search(line)
    ]
    assert not readers


@pytest.mark.parametrize("name", ["utils", "state", "logging", "launchers", "local_sgd", "big_modeling"])
def test_hf_accelerate_s_modules_are_where_accelerate_has_them(name):
    core = ROOT / "packages/core/src/plait"
    assert (core / f"{name}.py").exists() or (core / name / "__init__.py").exists()


def test_the_accelerator_imports_the_saving_and_dataloader_machinery_only_when_used(tmp_path):
    # ``import plait; plait.Accelerator`` stays cheap (the startup benchmark's figure): the checkpoint
    # files, the dataloader and the process-group collectives load with their first use, through the same names.
    code = textwrap.dedent(
        f"""
        import json, sys
        import torch
        import plait
        # Loaded by what the script below does: a save, and a prepared dataloader.
        used = ["plait.checkpoint.directory", "plait.checkpoint.writer", "plait.data.loader", "plait.data.sharding"]
        # Loaded only by save_model, and by a group of more than one process.
        unused = ["plait.checkpoint.exports", "plait.collectives.torch_distributed"]
        accelerator = plait.Accelerator(cpu=True)
        before = [m for m in used + unused if m in sys.modules]
        model = accelerator.prepare(torch.nn.Linear(2, 2))
        loader = accelerator.prepare(torch.utils.data.DataLoader(list(range(4)), batch_size=2))
        accelerator.save_state({str(tmp_path / "ckpt")!r})
        from plait.checkpoint import MANIFEST, CheckpointWriter
        from plait.data import DataLoaderShard
        print(json.dumps({{"before": before, "after": [m for m in used if m not in sys.modules],
                          "loader": isinstance(loader, DataLoaderShard), "writer": CheckpointWriter.__name__,
                          "manifest": MANIFEST}}))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["before"] == []
    assert report["after"] == []
    assert report["loader"] is True
    assert report["writer"] == "CheckpointWriter"
    assert (tmp_path / "ckpt" / report["manifest"]).is_file()
