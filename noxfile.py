"""Test sessions: core alone (no plugin at all), each plugin with core, everything, and lint.

Every install uses constraints.txt.

Run all default sessions with ``nox``; one with ``nox -s core``.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "core", "ddp", "cli", "fsdp", "zero", "trackers", "examples", "all"]
nox.options.reuse_existing_virtualenvs = True

CONSTRAINTS = ("-c", "constraints.txt")
TRACKERS = ("-e", "packages/trackers[tensorboard,wandb,comet]")
#: DeepSpeed (plait-zero) builds from its sdist: the constraints apply inside pip's build environment too.
PIP_CONSTRAINT = {"PIP_CONSTRAINT": str(Path("constraints.txt").resolve())}


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
def cli(session: nox.Session) -> None:
    """Core, ddp and plait-cli: the `plait` console script run as a user runs it, launching real gloo jobs.

    plait-trackers comes without its extras (no tensorboard, wandb or comet_ml): trackers whose library
    is missing must keep the command line quiet.
    """
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/cli",
                    "-e", "packages/trackers", "pytest")
    session.run("pytest", "tests/cli", *session.posargs)


@nox.session(python="3.11")
def fsdp(session: nox.Session) -> None:
    """Core plus the fsdp backend: FSDP2 on real processes over gloo, checked against ddp (installed as the
    oracle); plait-cli for `plait fsdp merge-weights` and `plait test --backend fsdp`."""
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/fsdp", "-e", "packages/cli",
                    "pytest")
    session.run("pytest", "tests/fsdp", *session.posargs)


@nox.session(python="3.11")
def zero(session: nox.Session) -> None:
    """Core plus the zero backend (DeepSpeed ZeRO 1-3), with ddp as its oracle: real 2-process runs over gloo.

    DeepSpeed builds from its sdist; PIP_CONSTRAINT gives pip's isolated build environment the same pins.
    plait-cli drives the launch flags and `plait test --backend zero`.
    """
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/zero", "-e", "packages/cli",
                    "pytest", env=PIP_CONSTRAINT)
    session.run("pytest", "tests/zero", *session.posargs)


@nox.session(python="3.11")
def trackers(session: nox.Session) -> None:
    """Core plus plait-trackers with TensorBoard, wandb and Comet, all offline, read back from their files.

    plait-ddp is installed for the two-process test only; pillow for the image tests.
    """
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", *TRACKERS, "pytest", "pillow")
    session.run("pytest", "tests/trackers", *session.posargs)


@nox.session(python="3.11")
def examples(session: nox.Session) -> None:
    """examples/by_feature (HF Accelerate's scripts, for plait) run as a user runs them: `python script.py` and
    `plait launch --num_processes 2 --cpu script.py`, each checked against its numbers.

    TensorBoard for tracking.py, schedulefree for schedule_free.py; the fsdp and deepspeed scripts are tested in
    the fsdp and zero sessions.
    """
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/cli",
                    "-e", "packages/trackers[tensorboard]", "schedulefree", "pytest")
    session.run("pytest", "tests/examples", *session.posargs)


@nox.session(python="3.11")
def all(session: nox.Session) -> None:
    """Every package installed together: the core and tracker suites must still hold with all plugins present."""
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/cli", "-e", "packages/fsdp",
                    "-e", "packages/zero", *TRACKERS, "pytest", "pillow", env=PIP_CONSTRAINT)
    session.run("pytest", "tests/core", "tests/trackers", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    """ruff over everything; mypy --strict over every package and the benchmarks."""
    session.install(*CONSTRAINTS, "ruff", "mypy", "types-PyYAML", "accelerate", "-e", "packages/core", "-e", "packages/ddp",
                    "-e", "packages/cli", "-e", "packages/fsdp", "-e", "packages/zero", *TRACKERS, env=PIP_CONSTRAINT)
    session.run("ruff", "check", ".")
    session.run("mypy", "--strict")  # every package (pyproject's [tool.mypy] packages)
    session.run("mypy", "--strict", "benchmarks")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against raw PyTorch and HF Accelerate; results in benchmarks/results/."""
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/trackers[tensorboard]",
                    "-e", "packages/cli", "-e", "packages/fsdp", "-e", "packages/zero", "accelerate", env=PIP_CONSTRAINT)
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/ddp.py", *session.posargs)
    session.run("python", "benchmarks/trackers_log.py")
    session.run("python", "benchmarks/cli.py", *session.posargs)
    session.run("python", "benchmarks/fsdp.py", *session.posargs)
    session.run("python", "benchmarks/zero.py", *session.posargs)
