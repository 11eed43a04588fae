"""What every ``plait`` command shares: one plugin manager with every installed plugin registered."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import pluggy

from plait.config import disabled_plugins
from plait.plugins import PluginInfo, load_all, new_manager
from plait.plugins.hooks import Hooks


@dataclass
class CliState:
    """The command line's plugin manager: core's defaults plus every installed, unblocked plugin."""

    pm: pluggy.PluginManager
    #: Plugins that failed to load (shown by ``plait plugins`` and ``plait env``).
    broken: list[PluginInfo] = field(default_factory=list)
    disabled: tuple[str, ...] = ()
    #: Plugins whose library is not installed (a tracker without wandb): silent until a run names them.
    needs: list[PluginInfo] = field(default_factory=list)

    @property
    def hooks(self) -> Hooks:
        return Hooks(self.pm)

    @classmethod
    def load(cls) -> CliState:
        disabled = disabled_plugins(os.environ)
        pm = new_manager()
        skipped = load_all(pm, disabled)
        return cls(
            pm=pm, broken=[info for info in skipped if info.needs is None], disabled=disabled,
            needs=[info for info in skipped if info.needs is not None],
        )

    def warn_broken(self) -> None:
        """One line on stderr per plugin that failed to load (``plait plugins`` shows the details)."""
        for info in self.broken:
            print(
                f"plait: plugin {info.name!r} ({info.distribution} {info.version}) was not loaded: {info.error}",
                file=sys.stderr,
            )
