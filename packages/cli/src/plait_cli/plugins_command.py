"""``plait plugins``: every installed plugin, its distribution, version, hooks and status. No torch import."""

from __future__ import annotations

import json

import click

GROUP_TITLES = {"plait.backends": "backends", "plait.trackers": "trackers", "plait.plugins": "plugins"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of text.")
@click.option("--all", "include_builtin", is_flag=True, help="Also list core's built-in defaults (backend 'single').")
def plugins(as_json: bool, include_builtin: bool) -> None:
    """List installed plugins: group, name, distribution, version, hooks, status (ok, or the load error)."""
    from plait.plugins import GROUPS, list_plugins

    infos = list_plugins(include_builtin=include_builtin)
    if as_json:
        click.echo(json.dumps([info.to_dict() for info in infos], indent=2))
        return
    width = max((len(info.name) for info in infos), default=0)
    source = max((len(f"{info.distribution} {info.version}") for info in infos), default=0)
    for group in GROUPS:
        members = [info for info in infos if info.group == group]
        click.echo(f"{GROUP_TITLES[group]} ({group}):")
        if not members:
            click.echo("  (none installed)")
        for info in members:
            click.echo(f"  {info.name:<{width}}  {f'{info.distribution} {info.version}':<{source}}  {info.status}")
            if info.hooks:
                click.echo(f"  {'':<{width}}  hooks: {', '.join(hook.removeprefix('plait_') for hook in info.hooks)}")
