"""The commands that install plait's extras, from an index and from a checkout of plait's repository.

``pip install plait[fsdp]`` works once plait is published; from a clone of the repository the same extra is a
sibling folder, installed editable under the repository's pins: ``pip install -c constraints.txt -e
packages/fsdp``. Every message that tells a user to install an extra goes through :func:`install_hint`, so that a
user running from a checkout is told the command that works there too.

A checkout is recognised by where this module's own source lies: ``<root>/packages/core/src/plait`` with
``<root>/constraints.txt`` beside it (an editable install of ``plait``, or ``PYTHONPATH`` pointing at the
source). A wheel installed into site-packages has neither, and gets only the index's command. The folder and
extra that an extra of ``plait`` names are read from the checkout's ``packages/core/pyproject.toml``, the file
pip itself reads there.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

#: ``plait-trackers[wandb]==0.1.0`` -> the distribution (``plait-trackers``) and its extras (``[wandb]``).
_PIN = re.compile(r"^(?P<name>plait-[a-z0-9-]+)(?P<extras>\[[a-z0-9_,-]+\])?\s*==")


def pip_command(extra: str) -> str:
    """The command that installs extra ``extra`` of ``plait`` from a package index."""
    return f"pip install plait[{extra}]"


@functools.lru_cache(maxsize=1)
def checkout_root() -> Path | None:
    """The root of the plait repository this ``plait`` runs from, or ``None`` when plait is installed from a
    wheel (or an sdist): then no ``packages/`` folder lies beside its source."""
    source = Path(__file__).resolve().parents[2]  # .../packages/core/src
    root = source.parents[2]
    if source.name != "src" or source.parent != root / "packages" / "core":
        return None
    if not ((root / "packages" / "core" / "pyproject.toml").is_file() and (root / "constraints.txt").is_file()):
        return None
    return root


@functools.lru_cache(maxsize=1)
def _extra_folders() -> dict[str, str]:
    """Each extra of the checkout's ``plait`` that names one sibling distribution -> the path pip installs
    editable (``packages/trackers[wandb]``), for the folders that exist in this checkout."""
    root = checkout_root()
    if root is None or sys.version_info < (3, 11):  # tomllib: the checkout's form is left out on Python 3.10
        return {}
    import tomllib

    with open(root / "packages" / "core" / "pyproject.toml", "rb") as file:
        extras = tomllib.load(file).get("project", {}).get("optional-dependencies", {})
    folders: dict[str, str] = {}
    for extra, requirements in extras.items():
        pins = [match for match in map(_PIN.match, requirements) if match is not None]
        if len(pins) != 1 or len(requirements) != 1:  # `all` names several: no single folder
            continue
        folder = pins[0]["name"].removeprefix("plait-")
        if (root / "packages" / folder / "pyproject.toml").is_file():
            folders[extra] = f"packages/{folder}{pins[0]['extras'] or ''}"
    return folders


def checkout_command(extra: str) -> str | None:
    """``pip install -c constraints.txt -e packages/<folder>`` for ``extra`` when plait runs from a checkout that
    has that folder; ``None`` otherwise."""
    folder = _extra_folders().get(extra)
    return None if folder is None else f"pip install -c constraints.txt -e {folder}"


def from_checkout(extra: str) -> str:
    """``" (from the checkout <root>: pip install -c constraints.txt -e packages/<folder>)"``, or ``""`` when
    plait does not run from a checkout: the tail a message adds after its ``pip install plait[<extra>]``."""
    command = checkout_command(extra)
    return "" if command is None else f" (from the checkout {checkout_root()}: {command})"


def install_hint(extra: str) -> str:
    """``pip install plait[<extra>]``, followed by the checkout's command when plait runs from one."""
    return pip_command(extra) + from_checkout(extra)
