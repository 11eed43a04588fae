"""The first-party plugins and the choice of backend: one table, one function.

:data:`FIRST_PARTY` names every plugin this project ships and the extra of the
``plait`` distribution that installs it; config sections, install hints and the
backend chosen for a run are all read from it. :func:`choose_backend` is the one
place that decides which backend runs, for the Accelerator and for ``plait launch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plait.errors import ConfigError, closest
from plait.plugins import discovery
from plait.plugins.discovery import BACKENDS_GROUP, TRACKERS_GROUP
from plait.plugins.install_commands import checkout_command, checkout_root, from_checkout, pip_command

if TYPE_CHECKING:
    from plait.config import Config


@dataclass(frozen=True)
class FirstParty:
    """A plugin of this project: its entry-point group and name, and the extra of ``plait`` that installs it."""

    group: str
    name: str
    #: ``pip install plait[<extra>]``; ``None`` for what core itself provides.
    extra: str | None
    #: HF Accelerate's ``distributed_type`` values (in its config file) that select this backend.
    accelerate_types: tuple[str, ...] = ()


#: The built-in single-process backend: core's default implementation of every hook group.
BUILTIN_BACKEND = "single"
#: The backend a run of several processes gets when none is named.
MULTI_PROCESS_BACKEND = "ddp"

FIRST_PARTY: tuple[FirstParty, ...] = (
    FirstParty(BACKENDS_GROUP, BUILTIN_BACKEND, None, ("NO",)),
    FirstParty(BACKENDS_GROUP, "ddp", "ddp", ("MULTI_CPU", "MULTI_GPU")),
    FirstParty(BACKENDS_GROUP, "fsdp", "fsdp", ("FSDP",)),
    FirstParty(BACKENDS_GROUP, "zero", "zero", ("DEEPSPEED",)),
    FirstParty(BACKENDS_GROUP, "xla", "xla", ("XLA", "TPU")),
    FirstParty(TRACKERS_GROUP, "tensorboard", "tensorboard"),
    FirstParty(TRACKERS_GROUP, "wandb", "wandb"),
    FirstParty(TRACKERS_GROUP, "comet_ml", "comet"),
)


def first_party(group: str) -> tuple[str, ...]:
    """Names of the first-party plugins of ``group``, installed or not."""
    return tuple(p.name for p in FIRST_PARTY if p.group == group)


def backend_for_accelerate(distributed_type: str) -> str | None:
    """The backend an HF Accelerate config's ``distributed_type`` selects, or ``None``."""
    return next((p.name for p in FIRST_PARTY if distributed_type in p.accelerate_types), None)


def accelerate_types() -> tuple[str, ...]:
    """Every HF Accelerate ``distributed_type`` a first-party backend answers to."""
    return tuple(t for p in FIRST_PARTY for t in p.accelerate_types)


def _extra(group: str, name: str) -> str | None:
    return next((p.extra for p in FIRST_PARTY if p.group == group and p.name == name), None)


def _pip_hint(group: str, name: str) -> str:
    """``pip install plait[<extra>]`` for a first-party plugin, what to install otherwise."""
    extra = _extra(group, name)
    return pip_command(extra) if extra else f"install the package that provides {group} entry point {name!r}"


def _checkout_hints(group: str, names: Sequence[str]) -> str:
    """``"; from the checkout <root>: pip install -c constraints.txt -e packages/fsdp"`` for those of ``names``
    whose folder this checkout has (``""`` outside a checkout): the tail of a message whose hints are the index's."""
    extras = [extra for extra in (_extra(group, n) for n in names) if extra]
    commands = [command for command in map(checkout_command, extras) if command is not None]
    return f"; from the checkout {checkout_root()}: {'; '.join(commands)}" if commands else ""


def install_hint(group: str, name: str) -> str:
    """The command that installs plugin ``name`` of ``group``, when a first-party extra has it: ``pip install
    plait[<extra>]``, and from a checkout also the command that works there
    (:mod:`plait.plugins.install_commands`)."""
    extra = _extra(group, name)
    return _pip_hint(group, name) + (from_checkout(extra) if extra else "")


def selection_error(group: str, name: str, disabled: Sequence[str] = ()) -> str | None:
    """Why plugin ``name`` of ``group`` cannot be selected (not installed, unknown, blocked), naming what is
    installed and the ``pip install`` that adds the rest; ``None`` if it can be."""
    installed = list(discovery.installed_backends()) if group == BACKENDS_GROUP else list(discovery.names(group))
    kind = "backend" if group == BACKENDS_GROUP else "tracker"
    if name in disabled:
        return f"{kind} {name!r} is selected but blocked by PLAIT_DISABLE_PLUGINS; remove it from that list"
    if name in installed:
        return None
    known = sorted(set(first_party(group)) | set(installed))
    if name not in known:
        missing = [n for n in known if n not in installed]
        others = ", ".join(f"{n} ({_pip_hint(group, n)})" for n in missing)
        return (
            f"unknown {kind} {name!r}{closest(name, known)}: installed {kind}s are "
            f"{', '.join(installed) or 'none'}" + (f"; others available: {others}" if others else "")
            + _checkout_hints(group, missing)
        )
    return (
        f"{kind} {name!r} is not installed: {_pip_hint(group, name)} (installed {kind}s: {', '.join(installed) or 'none'})"
        + _checkout_hints(group, [name])
    )


def choose_backend(config: Config, num_processes: int, processes_source: str, processes_rank: int) -> str:
    """The backend that runs: the configured one, else ``single`` for one process and ``ddp`` for more.

    A configured ``single`` with several processes is a contradiction. The higher of its two
    sources wins (an argument or flag over ``PLAIT_*`` variables over the config file): when the
    process count's is higher, the multi-process default runs; otherwise it is an error naming both.

    :param config: the resolved configuration (its ``sources`` say where ``backend`` came from).
    :param num_processes: how many processes the run has, or asks for.
    :param processes_source: where that count comes from, for the error (``"--num-processes 2"``).
    :param processes_rank: that source's rank (:meth:`plait.config.Config.source_rank`; processes a
        launcher already started rank as an argument).
    """
    backend = config.backend
    if backend is None:
        return MULTI_PROCESS_BACKEND if num_processes > 1 else BUILTIN_BACKEND
    if backend == BUILTIN_BACKEND and num_processes > 1:
        if config.source_rank("backend") < processes_rank:
            return MULTI_PROCESS_BACKEND
        raise ConfigError(
            f"backend 'single' ({config.source_of('backend')}) runs one process, but {processes_source} asks for "
            f"{num_processes}: use backend {MULTI_PROCESS_BACKEND!r} ({_pip_hint(BACKENDS_GROUP, MULTI_PROCESS_BACKEND)}) "
            f"or another multi-process backend, or run one process"
            + _checkout_hints(BACKENDS_GROUP, [MULTI_PROCESS_BACKEND])
        )
    return backend
