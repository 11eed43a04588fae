"""The ``plait`` command group: built-in commands, then every plugin's (``plait_cli_commands``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from plait_cli.cli_state import CliState

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class PlaitGroup(click.Group):
    """Commands listed in the order they were added (built-in first), not alphabetically."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


def build_cli(state: CliState | None = None) -> click.Group:
    """The ``plait`` group with the built-in commands and those of every installed plugin."""
    from importlib.metadata import version

    from plait_cli.config_command import config
    from plait_cli.env_command import env
    from plait_cli.launch import build_launch_command
    from plait_cli.merge_command import merge_weights
    from plait_cli.plugins_command import plugins
    from plait_cli.selftest import test

    state = CliState.load() if state is None else state

    @click.group(cls=PlaitGroup, context_settings={**CONTEXT_SETTINGS, "obj": state})
    @click.version_option(version("plait-cli"), "--version", prog_name="plait")
    def cli() -> None:
        """plait: one PyTorch training loop on CPU, GPUs, clusters, sharded models and TPUs.

        \b
        Start a job:         plait launch --num-processes 2 train.py
        Write a config:      plait config   (or: plait config default)
        Check the install:   plait test
        Report a bug:        plait env
        Merge FSDP shards:   plait merge-weights CHECKPOINT_DIR OUTPUT_PATH
        """

    for command in (build_launch_command(state.pm), config, env, plugins, test, merge_weights):
        cli.add_command(command)
    state.hooks.cli_commands(cli)
    return cli


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``plait``."""
    state = CliState.load()
    state.warn_broken()
    cli = build_cli(state)
    cli.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name="plait")
