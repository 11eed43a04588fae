"""Plugin managers: one per Accelerator (and one for the command line), the built-in defaults first.

Registration order decides who answers a *firstresult* hook: pluggy calls the
most recently registered implementation first, so core's defaults
(:data:`BUILTIN_MODULES`) go first and are the fallback, then ``plait.plugins``
extensions, then the selected backend, then plugins passed in code.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from plait import hookspecs
from plait.errors import MissingLibrary, PluginError
from plait.plugins import discovery
from plait.plugins.catalog import install_hint, selection_error
from plait.plugins.discovery import BACKENDS_GROUP, GROUPS, PLUGINS_GROUP, PluginInfo, distribution, hook_names, load
from plait.plugins.markers import PROJECT_NAME

if TYPE_CHECKING:
    from plait.config import Config

#: Core's default implementation of every hook: the built-in ``single`` backend.
BUILTIN_MODULES = ("plait.builtin",)


def new_manager() -> pluggy.PluginManager:
    """A manager with plait's hook specs and the built-in defaults, and nothing else."""
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_MODULES:
        pm.register(importlib.import_module(module_name), name=module_name)
    return pm


def register(pm: pluggy.PluginManager, plugin: object, name: str | None = None) -> None:
    """Register ``plugin``; raise :class:`~plait.errors.PluginError` if it implements an unknown hook
    (naming the closest spec) or a hook with arguments its spec does not have."""
    label = name or str(getattr(plugin, "__name__", type(plugin).__name__))
    problem = discovery.unknown_hook(label, hook_names(plugin))
    if problem is not None:
        raise PluginError(problem)
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        if pm.is_registered(plugin):  # older pluggy releases keep the hooks checked before the bad one
            pm.unregister(plugin)
        raise PluginError(f"{exc}; the hooks and their arguments are listed in plait.hookspecs") from exc
    pm.check_pending()


def load_selected(pm: pluggy.PluginManager, group: str, name: str, disabled: Sequence[str]) -> object:
    """Load and register the plugin ``name`` of ``group`` that the configuration selected."""
    problem = selection_error(group, name, disabled)
    ep = discovery.find(group, name)
    if problem is not None or ep is None:
        raise PluginError(problem or f"plugin {name!r} of {group} has no entry point")
    kind = "backend" if group == BACKENDS_GROUP else "tracker"
    try:
        plugin = load(ep)
    except Exception as exc:
        dist, _ = distribution(ep)
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
    for ep in discovery.entry_points(PLUGINS_GROUP):
        if ep.name in config.disable_plugins:
            continue
        try:
            register(pm, load(ep), name=f"{PLUGINS_GROUP}:{ep.name}")
        except Exception as exc:  # never let a third party's plugin crash the host
            dist, version = distribution(ep)
            info = PluginInfo(ep.name, PLUGINS_GROUP, dist, version, error=f"{type(exc).__name__}: {exc}")
            broken.append(info)
            warnings.warn(f"plait plugin {ep.name!r} ({dist} {version}) was not loaded: {info.error}", stacklevel=3)
    return broken


def load_all(pm: pluggy.PluginManager, disabled: Sequence[str] = ()) -> list[PluginInfo]:
    """Register every installed plugin of every group, as the ``plait`` command line needs (for the
    commands, flags and questions plugins add). Nothing is selected: backends decline for other names.

    :return: the plugins that were not registered, which are skipped (never fatal): those that failed
        (``error``) and those whose library is not installed (``needs``, e.g. a tracker without wandb).
    """
    skipped: list[PluginInfo] = []
    for group in GROUPS:
        for ep in discovery.entry_points(group):
            if ep.name in disabled:
                continue
            dist, version = distribution(ep)
            try:
                register(pm, load(ep), name=f"{group}:{ep.name}")
            except MissingLibrary as exc:
                skipped.append(PluginInfo(ep.name, group, dist, version, needs=exc.install))
            except Exception as exc:  # a broken plugin is reported by the caller, never fatal
                skipped.append(PluginInfo(ep.name, group, dist, version, error=f"{type(exc).__name__}: {exc}"))
    return skipped


def load_run_plugins(
    pm: pluggy.PluginManager, config: Config, backend: str, launched: int, plugins: Sequence[object]
) -> list[PluginInfo]:
    """An accelerator's plugins, in registration order: extensions, the selected ``backend`` (when not
    the built-in one), then ``plugins`` given in code. Return the extensions that failed to load."""
    from plait.plugins import catalog, discovery

    broken = load_extensions(pm, config)
    if backend != catalog.BUILTIN_BACKEND:
        try:
            load_selected(pm, discovery.BACKENDS_GROUP, backend, config.disable_plugins)
        except PluginError as exc:
            if config.backend is not None:
                raise
            raise PluginError(
                f"this run has {launched} processes and no backend is named, so it needs the {backend!r} backend: {exc}"
            ) from None
    for plugin in plugins:
        register(pm, plugin)
    return broken


def accelerator_state(accelerator: Any) -> dict[str, Any]:
    """An accelerator's pickled state (``__getstate__``): everything but its plugin manager and hook caller."""
    return {key: value for key, value in vars(accelerator).items() if key not in ("plugin_manager", "hooks")}


def restore_accelerator(accelerator: Any, state: dict[str, Any]) -> None:
    """``__setstate__``: the state back, then the same plugins loaded again on a new plugin manager."""
    from plait.plugins.hooks import Hooks

    vars(accelerator).update(state)
    pm = accelerator.plugin_manager = new_manager()
    accelerator.hooks = Hooks(pm)
    load_run_plugins(pm, accelerator.config, accelerator.backend, accelerator.num_processes, accelerator.plugins)
