"""Test sessions: core alone (no plugin at all), each plugin with core, everything, and lint.

Every install uses constraints.txt.

Run all default sessions with ``nox``; one with ``nox -s core``.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "core", "ddp", "cli", "fsdp", "zero", "trackers", "examples", "all", "build",
                        "plugins", "docs", "xla"]
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
    """examples/ (the first hour's scripts, auto_resume.py) and examples/by_feature (HF Accelerate's scripts, for
    plait) run as a user runs them: `python script.py` and `plait launch --num_processes 2 --cpu script.py`, each
    checked against its numbers.

    TensorBoard for tracking.py and the transformers examples, schedulefree for schedule_free.py, transformers for
    text_classification.py and causal_language_model.py, plait-fsdp and plait-zero for the language model under
    `--backend fsdp` and `--backend zero --zero-stage 3` (DeepSpeed builds from its sdist: PIP_CONSTRAINT). The
    by_feature fsdp and deepspeed scripts are tested in the fsdp and zero sessions.
    """
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/cli",
                    "-e", "packages/fsdp", "-e", "packages/zero", "-e", "packages/trackers[tensorboard]",
                    "transformers", "schedulefree", "pytest", env=PIP_CONSTRAINT)
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


@nox.session(python="3.11")
def build(session: nox.Session) -> None:
    """An sdist and a wheel of every packages/*/pyproject.toml into dist/ (emptied first), then tests/packaging:
    fresh virtualenvs install them as a user would (`pip install --find-links dist 'plait[fsdp,wandb]'`).

    Built without isolation, with the build tool and setuptools pinned in constraints.txt: no download at build time.
    """
    import shutil

    session.install(*CONSTRAINTS, "build", "setuptools", "pytest")
    shutil.rmtree("dist", ignore_errors=True)
    for project in sorted(Path("packages").glob("*/pyproject.toml")):
        session.run("python", "-m", "build", "--no-isolation", "--outdir", "dist", str(project.parent))
    session.run("pytest", "tests/packaging", *session.posargs, env=PIP_CONSTRAINT)


@nox.session(python="3.11")
def plugins(session: nox.Session) -> None:
    """The plugin author's templates (examples/plugins/*), each pip-installed into this fresh environment beside
    the checkout's plait packages, listed by `plait plugins`, selected by name, and tested by its own tests."""
    templates = sorted(project.parent for project in Path("examples/plugins").glob("*/pyproject.toml"))
    session.install(*CONSTRAINTS, "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/cli", "pytest")
    session.install(*CONSTRAINTS, *map(str, templates), env=PIP_CONSTRAINT)  # not editable: as a user installs them
    for template in templates:  # each with its own pytest configuration (its pyproject.toml)
        session.run("pytest", str(template / "tests"), *session.posargs)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """The documentation site (mkdocs.yml, docs/): `mkdocs build --strict`, so a broken link or reference fails.

    mkdocs-click imports plait-cli to document `plait` with every first-party plugin's commands and flags, and
    mkdocstrings reads plait's sources; neither needs torch or DeepSpeed, so the packages are installed without
    their dependencies (and without build isolation: setuptools is pinned) to keep the session short.
    """
    session.install(*CONSTRAINTS, "mkdocs", "mkdocs-material", "mkdocs-click", "mkdocstrings[python]", "ruff",
                    "pluggy", "PyYAML", "click", "setuptools")
    packages = ("core", "cli", "ddp", "fsdp", "zero", "trackers")
    session.install(*CONSTRAINTS, "--no-deps", "--no-build-isolation",
                    *(arg for name in packages for arg in ("-e", f"packages/{name}")))
    session.run("mkdocs", "build", "--strict", "--site-dir", str(Path(session.create_tmp()) / "site"),
                env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session(python="3.11")
def xla(session: nox.Session) -> None:
    """Core, ddp, plait-cli and the xla backend on torch_xla's CPU device (PJRT_DEVICE=CPU), with its own pins:
    torch_xla exists for torch 2.9 only (constraints-xla.txt: torch 2.9.0 and torch_xla 2.9.0, about 7 GB with
    torch's CUDA libraries, ~5 minutes to install). mypy --strict checks plait_xla here, where torch_xla is installed
    (the lint session runs on torch 2.13 without it).

    Last of the default sessions: tests/xla runs the real torch_xla against the core session's torch 2.13 to see
    the "undefined symbol" error users meet.
    """
    session.install("-c", "constraints-xla.txt", "-e", "packages/core", "-e", "packages/ddp", "-e", "packages/cli",
                    "-e", "packages/xla", "pytest", "mypy")
    # torch_xla leaves functions unannotated, as torch does: calling them is not our untyped code.
    session.run("mypy", "--strict", "--config-file", "pyproject.toml", "--untyped-calls-exclude", "torch",
                "--untyped-calls-exclude", "click", "--untyped-calls-exclude", "torch_xla", "-p", "plait_xla",
                env={"MYPYPATH": "packages/core/src:packages/cli/src:packages/xla/src"})
    session.run("pytest", "tests/xla", *session.posargs, env={"PJRT_DEVICE": "CPU"})
