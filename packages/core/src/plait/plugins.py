"""Finding, loading, checking and listing plugins.

Three entry-point groups, so that nothing is imported before it is needed:
``plait.backends`` (only the selected backend is loaded), ``plait.trackers``
(only those named in ``log_with``), ``plait.plugins`` (always, unless blocked by
``PLAIT_DISABLE_PLUGINS`` or turned off by ``PLAIT_AUTOLOAD_PLUGINS=0``). This
module imports neither torch nor any plugin's dependency: listing must stay fast.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from plait import hookspecs
from plait._markers import PROJECT_NAME
from plait.errors import PluginError, closest

if TYPE_CHECKING:
    from plait.config import Config

BACKENDS_GROUP = "plait.backends"
TRACKERS_GROUP = "plait.trackers"
PLUGINS_GROUP = "plait.plugins"
GROUPS = (BACKENDS_GROUP, TRACKERS_GROUP, PLUGINS_GROUP)

#: The built-in single-process backend: core's default implementation of every hook group.
BUILTIN_BACKEND = "single"
BUILTIN_MODULES = (
    "plait.builtin.environment",
    "plait.builtin.placement",
    "plait.builtin.wrapping",
    "plait.builtin.precision",
    "plait.builtin.sync",
    "plait.builtin.state",
    "plait.builtin.report",
)
#: Extras of the ``plait`` distribution that install each first-party plugin.
EXTRAS = {
    (BACKENDS_GROUP, "ddp"): "ddp",
    (BACKENDS_GROUP, "fsdp"): "fsdp",
    (BACKENDS_GROUP, "zero"): "zero",
    (BACKENDS_GROUP, "xla"): "xla",
    (TRACKERS_GROUP, "tensorboard"): "tensorboard",
    (TRACKERS_GROUP, "wandb"): "wandb",
    (TRACKERS_GROUP, "comet_ml"): "comet",
}
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

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        return "ok" if self.error is None else f"broken: {self.error}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status
        return data


def entry_points(group: str) -> list[metadata.EntryPoint]:
    """The installed entry points of ``group``, first of each name only, sorted by name."""
    seen: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=group):
        seen.setdefault(ep.name, ep)
    return [seen[name] for name in sorted(seen)]


def installed_backends() -> tuple[str, ...]:
    """Names of the backends that can be selected (the built-in one first)."""
    return (BUILTIN_BACKEND, *(ep.name for ep in entry_points(BACKENDS_GROUP) if ep.name != BUILTIN_BACKEND))


def installed_trackers() -> tuple[str, ...]:
    """Names of the installed tracker plugins."""
    return tuple(ep.name for ep in entry_points(TRACKERS_GROUP))


def install_hint(group: str, name: str) -> str:
    """The command that installs plugin ``name`` of ``group``, when a first-party extra has it."""
    extra = EXTRAS.get((group, name))
    return f"pip install plait[{extra}]" if extra else f"install the package that provides {group} entry point {name!r}"


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


def _load(ep: metadata.EntryPoint) -> object:
    plugin = ep.load()
    return plugin() if isinstance(plugin, type) else plugin


def _distribution(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def list_plugins(include_builtin: bool = True, disabled: Sequence[str] | None = None) -> list[PluginInfo]:
    """Every installed plugin with its distribution, version, hooks and load error.

    Plugin modules are imported (they must keep heavy imports inside hook bodies)
    but never registered; a module that fails to import is reported, not raised.

    :param disabled: plugin names shown as disabled and not imported; ``None`` reads
        ``PLAIT_DISABLE_PLUGINS``, as every :class:`~plait.Accelerator` does.
    """
    if disabled is None:
        from plait.config import disabled_plugins

        disabled = disabled_plugins(os.environ)
    infos: list[PluginInfo] = []
    if include_builtin:
        version = metadata.version(PROJECT_NAME)
        hooks: set[str] = set()
        for module_name in BUILTIN_MODULES:
            hooks.update(hook_names(importlib.import_module(module_name)))
        infos.append(PluginInfo(BUILTIN_BACKEND, BACKENDS_GROUP, PROJECT_NAME, version, sorted(hooks)))
    for group in GROUPS:
        for ep in entry_points(group):
            dist, version = _distribution(ep)
            info = PluginInfo(ep.name, group, dist, version, disabled=ep.name in disabled)
            if not info.disabled:
                try:
                    info.hooks = hook_names(_load(ep))
                except Exception as exc:  # a broken plugin is shown, never fatal
                    info.error = f"{type(exc).__name__}: {exc}"
                else:
                    # Registering it would fail the same way: show it as broken now.
                    problem = unknown_hook(ep.name, info.hooks)
                    info.error = None if problem is None else f"{PluginError.__name__}: {problem}"
            infos.append(info)
    return infos


def new_manager() -> pluggy.PluginManager:
    """A manager with plait's hook specs and the built-in defaults, and nothing else."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
    return pm


def unknown_hook(label: str, hooks: Sequence[str]) -> str | None:
    """The error for the first of ``hooks`` that is not a plait hook spec (naming the closest), or ``None``."""
    for hook in hooks:
        if hook not in SPEC_NAMES:
            return (
                f"plugin {label!r} implements unknown hook {hook!r}{closest(hook, SPEC_NAMES)}; "
                f"the hooks are listed in plait.hookspecs"
            )
    return None


def register(pm: pluggy.PluginManager, plugin: object, name: str | None = None) -> None:
    """Register ``plugin``; raise :class:`~plait.errors.PluginError` if it implements an unknown hook
    (naming the closest spec) or a hook with arguments its spec does not have."""
    label = name or str(getattr(plugin, "__name__", type(plugin).__name__))
    problem = unknown_hook(label, hook_names(plugin))
    if problem is not None:
        raise PluginError(problem)
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):  # older pluggy releases keep the hooks checked before the bad one
            pm.unregister(plugin)
        raise PluginError(f"{exc}; the hooks and their arguments are listed in plait.hookspecs") from exc
    pm.check_pending()


def _find(group: str, name: str) -> metadata.EntryPoint | None:
    return next((ep for ep in entry_points(group) if ep.name == name), None)


def selection_error(group: str, name: str, disabled: Sequence[str] = ()) -> str | None:
    """Why plugin ``name`` of ``group`` cannot be selected (not installed, unknown, blocked), naming what is
    installed and the ``pip install`` that adds the rest; ``None`` if it can be."""
    installed = list(installed_backends()) if group == BACKENDS_GROUP else [ep.name for ep in entry_points(group)]
    kind = "backend" if group == BACKENDS_GROUP else "tracker"
    if name in disabled:
        return f"{kind} {name!r} is selected but blocked by PLAIT_DISABLE_PLUGINS; remove it from that list"
    if name in installed:
        return None
    known = sorted({n for (g, n) in EXTRAS if g == group} | set(installed))
    if name not in known:
        others = ", ".join(f"{n} ({install_hint(group, n)})" for n in known if n not in installed)
        return (
            f"unknown {kind} {name!r}{closest(name, known)}: installed {kind}s are "
            f"{', '.join(installed) or 'none'}" + (f"; others available: {others}" if others else "")
        )
    return f"{kind} {name!r} is not installed: {install_hint(group, name)} (installed {kind}s: {', '.join(installed) or 'none'})"


def load_selected(pm: pluggy.PluginManager, group: str, name: str, disabled: tuple[str, ...]) -> object:
    """Load and register the plugin ``name`` of ``group`` that the configuration selected."""
    problem = selection_error(group, name, disabled)
    ep = _find(group, name)
    if problem is not None or ep is None:
        raise PluginError(problem or f"plugin {name!r} of {group} has no entry point")
    kind = "backend" if group == BACKENDS_GROUP else "tracker"
    try:
        plugin = _load(ep)
    except Exception as exc:
        dist, _ = _distribution(ep)
        raise PluginError(
            f"{kind} {name!r} (distribution {dist}) failed to load: {type(exc).__name__}: {exc}; "
            f"reinstall it ({install_hint(group, name)}) or check `plait plugins`"
        ) from exc
    register(pm, plugin, name=f"{group}:{name}")
    return plugin


def load_extensions(pm: pluggy.PluginManager, config: Config) -> list[PluginInfo]:
    """Load every ``plait.plugins`` entry point not blocked; a broken one is warned about and skipped."""
    broken: list[PluginInfo] = []
    if not config.autoload_plugins:
        return broken
    for ep in entry_points(PLUGINS_GROUP):
        if ep.name in config.disable_plugins:
            continue
        try:
            plugin = _load(ep)
            register(pm, plugin, name=f"{PLUGINS_GROUP}:{ep.name}")
        except Exception as exc:  # never let a third party's plugin crash the host
            dist, version = _distribution(ep)
            info = PluginInfo(ep.name, PLUGINS_GROUP, dist, version, error=f"{type(exc).__name__}: {exc}")
            broken.append(info)
            warnings.warn(f"plait plugin {ep.name!r} ({dist} {version}) was not loaded: {info.error}", stacklevel=3)
    return broken


def load_all(pm: pluggy.PluginManager, disabled: Sequence[str] = ()) -> list[PluginInfo]:
    """Register every installed plugin of every group, as the ``plait`` command line needs (for the
    commands, flags and questions plugins add). Nothing is selected: backends decline for other names.

    :return: the plugins that failed to load or register, which are skipped (never fatal).
    """
    broken: list[PluginInfo] = []
    for group in GROUPS:
        for ep in entry_points(group):
            if ep.name in disabled:
                continue
            try:
                register(pm, _load(ep), name=f"{group}:{ep.name}")
            except Exception as exc:  # a broken plugin is reported by the caller, never fatal
                dist, version = _distribution(ep)
                broken.append(PluginInfo(ep.name, group, dist, version, error=f"{type(exc).__name__}: {exc}"))
    return broken

