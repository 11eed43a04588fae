"""Griffe extension: turn the Sphinx roles of plait's docstrings into mkdocstrings cross-references.

plait's docstrings are Sphinx-style (``:param x:``, ``:class:`~plait.Accelerator```). mkdocstrings' Sphinx
parser reads the fields; this rewrites the roles before it does. A role naming an object of plait's packages
becomes ``[`Accelerator`][plait.Accelerator]``, which mkdocs-autorefs resolves to the page that renders the
object, so a reference to an object the site does not render fails ``mkdocs build --strict``. A role naming a
relative object (``:func:`plait_device```) is looked up from the object's own scope outwards. Any other
role (``:class:`torch.device```: torch, pluggy, click have no inventory the build can reach) becomes code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

FIELD = re.compile(r"^:(?:param|type|return|returns|rtype|raises|raise|ivar|var|cvar|yield|yields)\b")
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`<>]+)`")
#: Top-level packages whose objects the site renders (or should: a reference to one is checked).
OURS = ("plait", "plait_cli", "plait_ddp", "plait_fsdp", "plait_zero", "plait_trackers", "plait_xla")


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The absolute path of ``target`` seen from ``obj``, or ``None`` when it is not one of plait's objects."""
    if target.split(".")[0] in OURS:
        return target
    first = target.split(".")[0]
    scope: griffe.Object | None = obj
    while scope is not None:
        member = scope.members.get(first)
        if member is not None:
            # `torch` in a module that imports torch: an alias to a package the site does not render.
            if member.is_alias and member.target_path.split(".")[0] not in OURS:
                return None
            return f"{scope.path}.{target}"
        scope = scope.parent
    return None


def _fields_last(text: str) -> str:
    """Move paragraphs that follow the ``:param:`` fields (``Stops at the first non-None result.``) before
    them: Sphinx shows them as text, mkdocstrings' parser would add them to the last field."""
    lines = text.splitlines()
    first = next((i for i, line in enumerate(lines) if FIELD.match(line)), None)
    if first is None:
        return text
    end = first
    for i in range(first, len(lines)):
        line = lines[i]
        if FIELD.match(line) or (line.startswith((" ", "\t")) and line.strip()):
            end = i + 1
        elif line.strip():
            break
    trailing = lines[end:]
    if not any(line.strip() for line in trailing):
        return text
    head = "\n".join(lines[:first]).rstrip()
    return "\n\n".join(part for part in (head, "\n".join(trailing).strip(), "\n".join(lines[first:end])) if part)


def _literal_blocks(text: str) -> str:
    """reST's ``text::`` before an indented block is ``text:`` (the block is indented code in Markdown too)."""
    return re.sub(r"(?m)(\S)::$", r"\1:", re.sub(r"(?m)^\s*::$", "", text))


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` in every docstring of the loaded packages."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is None:
            return

        def replace(match: re.Match[str]) -> str:
            short, target = match.group(1), match.group(2).strip()
            title = target.rsplit(".", 1)[-1] if short else target
            path = _resolve(obj, target)
            if path is None:
                return f"`{title}`"
            return f"[`{title}`][{path}]"

        obj.docstring.value = _fields_last(_literal_blocks(ROLE.sub(replace, obj.docstring.value)))
