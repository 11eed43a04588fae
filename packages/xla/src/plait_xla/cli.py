"""The xla backend's command-line parts: ``plait launch`` flags and ``plait config`` questions.

Imported from hook bodies only (it imports click).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click


def launch_options() -> list[click.Option]:
    """Flags of ``plait launch`` filling the ``xla:`` section; each sets its key only when given."""
    return [
        click.Option(["--xla-spmd/--no-xla-spmd", "spmd"], default=None,
                     help="xla: one process drives every device (SPMD); batches split over the devices."),
        click.Option(["--xla-fsdp/--no-xla-fsdp", "fsdp"], default=None,
                     help="xla: with --xla-spmd, also shard parameters over the devices (FSDPv2)."),
    ]


def ask_questions(ask: Callable[..., Any]) -> dict[str, Any]:
    """The ``xla:`` section from the ``plait config`` questionnaire (only answers away from the defaults)."""
    section: dict[str, Any] = {}
    if ask("xla: drive every device from one process (SPMD) rather than one process per device?",
           default=False, type=bool):
        section["spmd"] = True
        if ask("xla: shard parameters over the devices too (FSDPv2)?", default=False, type=bool):
            section["fsdp"] = True
    return section
