"""The ddp backend's command-line parts: ``plait launch`` flags and ``plait config`` questions.

Imported from hook bodies only (it imports click).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from plait_ddp.options import COMM_HOOKS


def launch_options() -> list[click.Option]:
    """Flags of ``plait launch`` filling the ``ddp:`` section; each sets its key only when given."""
    return [
        click.Option(["--ddp-find-unused-parameters/--no-ddp-find-unused-parameters", "find_unused_parameters"],
                     default=None, help="ddp: allow parameters that get no gradient in a step."),
        click.Option(["--ddp-bucket-cap-mb", "bucket_cap_mb"], type=click.FloatRange(min=0, min_open=True),
                     default=None, help="ddp: gradient bucket size in MB."),
        click.Option(["--ddp-gradient-as-bucket-view/--no-ddp-gradient-as-bucket-view", "gradient_as_bucket_view"],
                     default=None, help="ddp: gradients are views into the buckets (saves memory)."),
        click.Option(["--ddp-static-graph/--no-ddp-static-graph", "static_graph"], default=None,
                     help="ddp: the graph is the same every step."),
        click.Option(["--ddp-broadcast-buffers/--no-ddp-broadcast-buffers", "broadcast_buffers"], default=None,
                     help="ddp: copy rank 0's buffers to every rank before each forward."),
        click.Option(["--ddp-comm-hook", "comm_hook"], type=click.Choice(COMM_HOOKS), default=None,
                     help="ddp: all-reduce gradients compressed to fp16 or bf16."),
    ]


def ask_questions(ask: Callable[..., Any]) -> dict[str, Any]:
    """The ``ddp:`` section from the ``plait config`` questionnaire (only answers away from the defaults)."""
    section: dict[str, Any] = {}
    if ask("ddp: do some parameters get no gradient in some steps (find_unused_parameters)?", default=False, type=bool):
        section["find_unused_parameters"] = True
    comm_hook = ask("ddp: compress gradients for the all-reduce?", default="no", choices=list(COMM_HOOKS))
    if comm_hook != "no":
        section["comm_hook"] = comm_hook
    return section
