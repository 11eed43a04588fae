"""The plugin system: markers, entry-point discovery, the first-party catalog, plugin managers and the
typed hook caller.

Three entry-point groups, so that nothing is imported before it is needed:
``plait.backends`` (only the selected backend is loaded), ``plait.trackers``
(only those named in ``log_with``), ``plait.plugins`` (always, unless blocked by
``PLAIT_DISABLE_PLUGINS`` or turned off by ``PLAIT_AUTOLOAD_PLUGINS=0``). Nothing
here imports torch or any plugin's dependency: listing must stay fast.

Names are imported from their modules on first use, so that ``plait.hookspecs``
can import :mod:`plait.plugins.markers` without loading the rest.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_LAZY = {
    "BACKENDS_GROUP": "plait.plugins.discovery",
    "TRACKERS_GROUP": "plait.plugins.discovery",
    "PLUGINS_GROUP": "plait.plugins.discovery",
    "GROUPS": "plait.plugins.discovery",
    "SPEC_NAMES": "plait.plugins.discovery",
    "PluginInfo": "plait.plugins.discovery",
    "entry_points": "plait.plugins.discovery",
    "installed_backends": "plait.plugins.discovery",
    "installed_trackers": "plait.plugins.discovery",
    "hook_names": "plait.plugins.discovery",
    "list_plugins": "plait.plugins.discovery",
    "unknown_hook": "plait.plugins.discovery",
    "BUILTIN_BACKEND": "plait.plugins.catalog",
    "FIRST_PARTY": "plait.plugins.catalog",
    "choose_backend": "plait.plugins.catalog",
    "install_hint": "plait.plugins.catalog",
    "selection_error": "plait.plugins.catalog",
    "BUILTIN_MODULES": "plait.plugins.manager",
    "new_manager": "plait.plugins.manager",
    "register": "plait.plugins.manager",
    "load_selected": "plait.plugins.manager",
    "load_extensions": "plait.plugins.manager",
    "load_all": "plait.plugins.manager",
    "Hooks": "plait.plugins.hooks",
}

__all__ = [
    "BACKENDS_GROUP",
    "BUILTIN_BACKEND",
    "BUILTIN_MODULES",
    "FIRST_PARTY",
    "GROUPS",
    "PLUGINS_GROUP",
    "SPEC_NAMES",
    "TRACKERS_GROUP",
    "Hooks",
    "PluginInfo",
    "choose_backend",
    "entry_points",
    "hook_names",
    "install_hint",
    "installed_backends",
    "installed_trackers",
    "list_plugins",
    "load_all",
    "load_extensions",
    "load_selected",
    "new_manager",
    "register",
    "selection_error",
    "unknown_hook",
]

if TYPE_CHECKING:
    from plait.plugins.catalog import BUILTIN_BACKEND, FIRST_PARTY, choose_backend, install_hint, selection_error
    from plait.plugins.discovery import (
        BACKENDS_GROUP,
        GROUPS,
        PLUGINS_GROUP,
        SPEC_NAMES,
        TRACKERS_GROUP,
        PluginInfo,
        entry_points,
        hook_names,
        installed_backends,
        installed_trackers,
        list_plugins,
        unknown_hook,
    )
    from plait.plugins.hooks import Hooks
    from plait.plugins.manager import (
        BUILTIN_MODULES,
        load_all,
        load_extensions,
        load_selected,
        new_manager,
        register,
    )


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'plait.plugins' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return __all__
