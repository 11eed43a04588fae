"""A cross-cutting extension: stamps every prepared model with the backend that prepared it."""

from __future__ import annotations

from typing import Any

from plait import hookimpl

STAMP = "plait_stamp"


@hookimpl(tryfirst=True)
def plait_wrap_model(accelerator: Any, model: Any) -> None:
    # Runs before any backend, marks the model, then declines so that the backend still wraps it.
    setattr(model, STAMP, accelerator.backend)


@hookimpl
def plait_env_report(config: Any) -> list[tuple[str, str]]:
    return [("plait-stamp", f"stamping models of backend {config.backend or 'single'}")]


@hookimpl
def plait_cli_commands(cli: Any) -> None:
    import click

    @click.command("stamp")
    @click.argument("name")
    def stamp(name: str) -> None:
        """Print the stamp a model would get."""
        click.echo(f"{STAMP}={name}")

    cli.add_command(stamp)
