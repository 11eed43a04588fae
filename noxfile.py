"""Test sessions: core alone (no plugin at all), each plugin with core, everything, and lint.

Every install uses constraints.txt.

Run all default sessions with ``nox``; one with ``nox -s core``.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "core", "ddp", "trackers", "all"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")
TRACKERS = ("-e", "packages/trackers[tensorboard,wandb,comet]")


@nox.session(python="3.11")
def core(session: nox.Session) -> None:
    """Core package only, with no plugin installed: the single-process Accelerator and the plugin system."""
    # click only lets the tests drive the cli hook group through a real click.Group.
    session.install(*CONSTRAINTS, "-e", "packages/core", "pytest", "click")
    session.run("pytest", "tests/core", *session.posargs)


@nox.session(python="3.11")
def ddp(session: nox.Session) -> None:
    """Core plus the ddp backend only: real multi-process runs over gloo."""
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "pytest")
    session.run("pytest", "tests/ddp", *session.posargs)


@nox.session(python="3.11")
def trackers(session: nox.Session) -> None:
    """Core plus plait-trackers with TensorBoard, wandb and Comet, all offline, read back from their files.

    plait-ddp is installed for the two-process test only; pillow for the image tests.
    """
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", *TRACKERS, "pytest", "pillow")
    session.run("pytest", "tests/trackers", *session.posargs)


@nox.session(python="3.11")
def all(session: nox.Session) -> None:
    """Every package installed together: the core and tracker suites must still hold with all plugins present."""
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", *TRACKERS, "pytest", "click", "pillow")
    session.run("pytest", "tests/core", "tests/trackers", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over everything, mypy over the packages."""
    session.install(*CONSTRAINTS, "ruff", "mypy", "types-PyYAML", "-e", "packages/core", "-e", "packages/ddp", *TRACKERS)
    session.run("ruff", "check", ".")
    session.run("mypy")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against raw PyTorch and HF Accelerate; results in benchmarks/results/."""
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/trackers[tensorboard]",
                    "accelerate")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/ddp.py", *session.posargs)
    session.run("python", "benchmarks/trackers_log.py")
