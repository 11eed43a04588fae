"""mkdocs hook: the ``plait`` command as the installed packages build it, importable by mkdocs-click.

``plait_cli.main.build_cli()`` builds the group at run time (built-in commands, then each plugin's
``plait_cli_commands``, and ``plait launch`` with every installed backend's flags), so there is no module-level
command to point mkdocs-click at. This hook builds it once and registers this module as ``plait_docs_cli``:
``::: mkdocs-click`` with ``:module: plait_docs_cli`` and ``:command: cli``.

click keeps the lines of a paragraph that follows a ``\\b`` line as they are; mkdocs-click reads help texts as
Markdown, which would join them, so such a paragraph is given to it as a fenced code block.
"""

from __future__ import annotations

import sys

import click

from plait_cli.main import build_cli


def _keep_line_breaks(text: str | None) -> str | None:
    if text is None or "\b" not in text:
        return text
    out: list[str] = []
    verbatim = False
    for line in [*text.strip().splitlines(), ""]:
        if line.strip() == "\b":
            verbatim = True
            out += ["", "```text"]
        elif verbatim and not line.strip():
            verbatim = False
            out += ["```", ""]
        else:
            out.append(line.strip() if verbatim else line)
    return "\n".join(out)


def _markdown_help(command: click.Command) -> None:
    command.help = _keep_line_breaks(command.help)
    for sub in getattr(command, "commands", {}).values():
        _markdown_help(sub)


cli = build_cli()
_markdown_help(cli)
sys.modules["plait_docs_cli"] = sys.modules[__name__]
