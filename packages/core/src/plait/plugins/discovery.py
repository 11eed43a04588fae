"""Finding installed plugins through their entry points, and listing them with their hooks and status.

Listing imports each plugin's module (plugins keep heavy imports inside hook bodies) but
registers nothing; a plugin that fails to load is reported, never raised.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from plait import hookspecs
from plait.errors import MissingLibrary, PluginError, closest
from plait.plugins.markers import PROJECT_NAME

BACKENDS_GROUP = "plait.backends"
TRACKERS_GROUP = "plait.trackers"
PLUGINS_GROUP = "plait.plugins"
GROUPS = (BACKENDS_GROUP, TRACKERS_GROUP, PLUGINS_GROUP)
SPEC_NAMES = frozenset(name for name in dir(hookspecs) if name.startswith("plait_"))


@dataclass
class PluginInfo:
    """One installed plugin, as ``plait plugins`` shows it."""

    name: str
    group: str
    distribution: str
    version: str
    hooks: list[str] = field(default_factory=list)
    error: str | None = None
    disabled: bool = False
    #: The command that installs the library the plugin needs, when only that is missing.
    needs: str | None = None

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        if self.needs is not None:
            return f"needs `{self.needs}`"
        return "ok" if self.error is None else f"broken: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data


#: Every installed entry point, from one scan of the installed distributions, and the
#: ``sys.path`` that scan read (a changed path, as when a directory is added, scans again).
_scanned: tuple[tuple[str, ...], Any] | None = None


def _installed_entry_points() -> Any:
    global _scanned
    path = tuple(sys.path)
    if _scanned is None or _scanned[0] != path:
        # One scan for every group: each scan reads the metadata of every installed distribution.
        _scanned = (path, metadata.entry_points())
    return _scanned[1]


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The installed entry points of ``group``, first of each name only, sorted by name."""
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in _installed_entry_points().select(group=group):
        seen.setdefault(ep.name, ep)
    return [seen[name] for name in sorted(seen)]


def find(group: str, name: str) -> metadata.EntryPoint | None:
    """The entry point ``name`` of ``group``, if installed."""
    return next((ep for ep in entry_points(group) if ep.name == name), None)


def names(group: str) -> tuple[str, ...]:
    """The names of the installed entry points of ``group``."""
    return tuple(ep.name for ep in entry_points(group))


def installed_backends() -> tuple[str, ...]:
    """Names of the backends that can be selected (the built-in one first)."""
    from plait.plugins.catalog import BUILTIN_BACKEND

    return (BUILTIN_BACKEND, *(name for name in names(BACKENDS_GROUP) if name != BUILTIN_BACKEND))


def installed_trackers() -> tuple[str, ...]:
    """Names of the installed tracker plugins."""
    return names(TRACKERS_GROUP)


def hook_names(plugin: object) -> list[str]:
    """Names of the hooks ``plugin`` implements (functions carrying the ``plait`` hookimpl marker).

    A function marked ``@hookimpl(specname="plait_x")`` implements ``plait_x``, whatever its own name.
    """
    names = set()
    for attr in dir(plugin):
        try:
            value = getattr(plugin, attr)
        except Exception:  # properties of plugin objects may fail outside a run
            continue
        opts = getattr(value, f"{PROJECT_NAME}_impl", None)
        if isinstance(opts, dict):
            names.add(opts.get("specname") or attr)
    return sorted(names)


def unknown_hook(label: str, hooks: Sequence[str]) -> str | None:
    """The error for the first of ``hooks`` that is not a plait hook spec (naming the closest), or ``None``."""
    for hook in hooks:
        if hook not in SPEC_NAMES:
            return (
                f"plugin {label!r} implements unknown hook {hook!r}{closest(hook, SPEC_NAMES)}; "
                f"the hooks are listed in plait.hookspecs"
            )
    return None


def load(ep: metadata.EntryPoint) -> object:
    """The plugin an entry point names (a class is instantiated: one plugin object per manager)."""
    plugin = ep.load()
    return plugin() if isinstance(plugin, type) else plugin


def distribution(ep: metadata.EntryPoint) -> tuple[str, str]:
    """The name and version of the distribution that installed ``ep``."""
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def inspect_entry_point(ep: metadata.EntryPoint, group: str) -> PluginInfo:
    """Load ``ep`` without registering it: its hooks, or why it cannot run (a library to install, an error)."""
    dist, version = distribution(ep)
    info = PluginInfo(ep.name, group, dist, version)
    try:
        target = ep.load()
        info.hooks = hook_names(target)
        if isinstance(target, type):
            target()  # a plugin class checks in its constructor that it can run (its library is installed)
    except MissingLibrary as exc:
        info.needs = exc.install
    except Exception as exc:  # a broken plugin is shown, never fatal
        info.error = f"{type(exc).__name__}: {exc}"
    else:
        # Registering it would fail the same way: show it as broken now.
        problem = unknown_hook(ep.name, info.hooks)
        info.error = None if problem is None else f"{PluginError.__name__}: {problem}"
    return info


def list_plugins(include_builtin: bool = True, disabled: Sequence[str] | None = None) -> list[PluginInfo]:
    """Every installed plugin with its distribution, version, hooks and status.

    Plugin modules are imported (they must keep heavy imports inside hook bodies)
    but never registered; a module that fails to import is reported, not raised.

    :param disabled: plugin names shown as disabled and not imported; ``None`` reads
        ``PLAIT_DISABLE_PLUGINS``, as every :class:`~plait.Accelerator` does.
    """
    from plait.plugins.catalog import BUILTIN_BACKEND
    from plait.plugins.manager import BUILTIN_MODULES

    if disabled is None:
        from plait.config import disabled_plugins

        disabled = disabled_plugins(os.environ)
    infos: list[PluginInfo] = []
    if include_builtin:
        hooks: set[str] = set()
        for module_name in BUILTIN_MODULES:
            hooks.update(hook_names(importlib.import_module(module_name)))
        infos.append(PluginInfo(BUILTIN_BACKEND, BACKENDS_GROUP, PROJECT_NAME, metadata.version(PROJECT_NAME), sorted(hooks)))
    for group in GROUPS:
        for ep in entry_points(group):
            if ep.name in disabled:
                dist, version = distribution(ep)
                infos.append(PluginInfo(ep.name, group, dist, version, disabled=True))
            else:
                infos.append(inspect_entry_point(ep, group))
    return infos
