"""``plait env``: versions, platform, devices and the resolved config, ready to paste into a bug report."""

from __future__ import annotations

from importlib import metadata

import click

from plait_cli.cli_state import CliState


def plait_distributions() -> list[tuple[str, str]]:
    """Every installed distribution named ``plait`` or ``plait-*``, with its version."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or ""
        if name == "plait" or name.startswith("plait-"):
            found.setdefault(name, dist.version)
    return sorted(found.items())


@click.command()
@click.option("--config-file", type=click.Path(dir_okay=False), default=None,
              help="Report this config file instead of the default one.")
@click.pass_obj
def env(state: CliState, config_file: str | None) -> None:
    """Print versions of Python, torch, plait and its plugins, the devices, and the resolved config."""
    import os

    import yaml

    from plait.config import Config, resolve_config
    from plait.errors import PlaitError
    from plait.plugins import installed_backends

    environ = dict(os.environ)
    if config_file is not None:
        environ["PLAIT_CONFIG_FILE"] = config_file
    config = None
    try:
        config = resolve_config(environ=environ, extra_backends=installed_backends())
        problem = None
    except PlaitError as exc:
        problem = str(exc)

    lines = state.hooks.env_report(config or Config())
    lines.append(("plait distributions", ", ".join(f"{name} {version}" for name, version in plait_distributions())))
    for info in state.broken:
        lines.append((f"plugin {info.name}", f"BROKEN: {info.error}"))
    for info in state.needs:
        lines.append((f"plugin {info.name}", f"needs `{info.needs}`"))
    if state.disabled:
        lines.append(("disabled plugins", ", ".join(state.disabled)))

    click.echo("Copy and paste the text below into your bug report.\n")
    for label, value in dict(lines).items():
        click.echo(f"- {label}: {value}")
    click.echo(f"- config file: {config.config_file if config and config.config_file else 'none (defaults)'}")
    if config is None:
        click.echo(f"- config: INVALID: {problem}")
    else:
        click.echo("- config:")
        for line in yaml.safe_dump(config.to_dict(), sort_keys=False).splitlines():
            click.echo(f"    {line}")
