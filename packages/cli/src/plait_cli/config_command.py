"""``plait config``: the questionnaire (questions of the installed backends), ``default``, ``show``, ``import``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from plait.plugins.catalog import BUILTIN_BACKEND, MULTI_PROCESS_BACKEND
from plait_cli.cli_state import CliState

HEADER = "# plait config, written by `plait config`; `plait config show` prints it resolved and checked.\n"


def config_file_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="The config file to read or write (default: $XDG_CONFIG_HOME/plait/default_config.yaml).",
    )(function)


def _target(ctx: click.Context, config_file: str | None) -> Path:
    """``--config-file`` of the subcommand, else of ``plait config``, else the default path."""
    from plait.config import default_config_path

    if config_file is None and ctx.parent is not None:
        config_file = ctx.parent.params.get("config_file")
    return Path(config_file) if config_file else default_config_path()


def gpu_count() -> int:
    """CUDA devices torch sees (torch is imported here, only by the commands that need defaults)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def validate(state: CliState, values: dict[str, Any]) -> dict[str, Any]:
    """Check ``values`` as a whole config (top-level keys and the backend's section); return them in
    the file's form. Raises a ``click.ClickException`` naming the bad value."""
    from plait.config import KEYS, Config
    from plait.errors import PlaitError

    top = {key: value for key, value in values.items() if key in KEYS}
    sections = {key: value for key, value in values.items() if key not in KEYS}
    try:
        config = Config(**top, sections=sections)
        backend = config.backend
        if backend is not None and backend in sections:
            state.hooks.backend_options(backend, sections[backend])
    except (PlaitError, TypeError) as exc:
        raise click.ClickException(f"the config is not valid: {exc}") from None
    return config.to_dict()


def _write(path: Path, data: dict[str, Any], force: bool, what: str) -> None:
    from plait.config.yaml_files import write_config_file

    if path.exists() and not force:
        raise click.ClickException(
            f"{path} already exists and was left as it is: pass --force to replace it, "
            f"or --config-file PATH to write {what} elsewhere"
        )
    write_config_file(path, data, HEADER)
    click.echo(f"plait config written to {path}")


@click.group(invoke_without_command=True)
@config_file_option
@click.pass_context
def config(ctx: click.Context, config_file: str | None) -> None:
    """Write a config file by answering questions; subcommands: default, show, import.

    The questions come from core and from the installed backends (only installed
    backends are offered). Answers are checked before anything is written.
    """
    if ctx.invoked_subcommand is None:
        path = _target(ctx, config_file)
        data = validate(ctx.obj, questionnaire(ctx.obj))
        from plait.config.yaml_files import write_config_file

        write_config_file(path, data, HEADER)
        click.echo(f"plait config written to {path}")


def ask(question: str, default: Any = None, choices: Sequence[Any] | None = None, type: Any = str) -> Any:
    """Prompt for one answer (the ``ask`` given to ``plait_config_questions``); re-asks until it is valid."""
    if choices:
        return click.prompt(question, default=default, type=click.Choice([str(c) for c in choices]))
    if type is bool:
        return click.confirm(question, default=bool(default))
    return click.prompt(question, default=default, type=type)


def questionnaire(state: CliState) -> dict[str, Any]:
    """Ask every question; return the config's values (top-level keys and the backend's section)."""
    from plait.config import MIXED_PRECISION_CHOICES
    from plait.plugins import installed_backends, installed_trackers

    gpus = gpu_count()
    unusable = {info.name for info in state.broken} | set(state.disabled)
    backends = [name for name in installed_backends() if name not in unusable]
    default_backend = MULTI_PROCESS_BACKEND if MULTI_PROCESS_BACKEND in backends and gpus > 1 else BUILTIN_BACKEND
    values: dict[str, Any] = {}
    values["backend"] = ask("Which backend?", default=default_backend, choices=backends)
    values["cpu"] = gpus > 0 and ask("Run on CPU only, although GPUs are present?", default=False, type=bool)
    if values["backend"] == BUILTIN_BACKEND:
        values["num_processes"] = 1
    else:
        machines = ask("How many machines?", default=1, type=click.IntRange(min=1))
        values["num_machines"] = machines
        if machines > 1:
            values["machine_rank"] = ask("The rank of this machine?", default=0, type=click.IntRange(0, machines - 1))
            values["main_process_ip"] = ask("The IP address of machine 0?", default="127.0.0.1")
            values["main_process_port"] = ask("A free port on machine 0?", default=29500, type=click.IntRange(1, 65535))
        per_machine = gpus if gpus and not values["cpu"] else 2
        values["num_processes"] = ask(
            "How many processes in all (across machines)?", default=per_machine * machines, type=click.IntRange(min=1)
        )
    values["mixed_precision"] = ask("Mixed precision?", default="no", choices=list(MIXED_PRECISION_CHOICES))
    values["gradient_accumulation_steps"] = ask("Gradient accumulation steps?", default=1, type=click.IntRange(min=1))
    missing = {info.name for info in state.needs}  # a tracker whose library is not installed cannot run
    trackers = tuple(name for name in installed_trackers() if name not in missing and name not in unusable)
    if trackers:
        answer = ask(f"Log with which trackers ({', '.join(trackers)}; comma-separated, or none)?", default="none")
        names = [name.strip() for name in answer.split(",") if name.strip() and name.strip() != "none"]
        unknown = [name for name in names if name not in trackers]
        if unknown:
            raise click.ClickException(
                f"tracker {unknown[0]!r} is not installed: expected some of {', '.join(trackers)}"
            )
        values["log_with"] = names
    section = state.hooks.config_questions(values["backend"], ask)
    if section:
        values[values["backend"]] = section
    return values


@config.command("default")
@config_file_option
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.pass_context
def default(ctx: click.Context, config_file: str | None, mixed_precision: str, force: bool) -> None:
    """Write a config sensible for this machine, without questions: every GPU (ddp), or one process."""
    from plait.plugins import installed_backends

    gpus = gpu_count()
    if gpus > 1 and MULTI_PROCESS_BACKEND in installed_backends():
        values: dict[str, Any] = {"backend": MULTI_PROCESS_BACKEND, "num_processes": gpus}
    else:
        values = {"backend": BUILTIN_BACKEND, "num_processes": 1, "cpu": gpus == 0}
    values["mixed_precision"] = mixed_precision
    _write(_target(ctx, config_file), validate(ctx.obj, values), force, "the default config")


@config.command()
@config_file_option
@click.pass_context
def show(ctx: click.Context, config_file: str | None) -> None:
    """Print the config file, resolved and checked (every key, defaults included)."""
    import yaml

    from plait.config import ENV_PREFIX, resolve_config
    from plait.errors import PlaitError
    from plait.plugins import installed_backends

    path = _target(ctx, config_file)
    if not path.is_file():
        raise click.ClickException(
            f"no config file at {path}: write one with `plait config` or `plait config default`"
        )
    try:
        config = resolve_config(environ={"PLAIT_CONFIG_FILE": str(path)}, extra_backends=installed_backends())
    except PlaitError as exc:
        raise click.ClickException(str(exc)) from None
    data = validate(ctx.obj, config.to_dict())
    click.echo(f"# {path}")
    click.echo(yaml.safe_dump(data, sort_keys=False), nl=False)
    overrides = sorted(name for name in os.environ if name.startswith(ENV_PREFIX) and name != "PLAIT_CONFIG_FILE")
    if overrides:
        click.echo(f"# overridden at run time by the environment: {', '.join(overrides)}")


@config.command("import")
@click.argument("source", required=False, type=click.Path(dir_okay=False))
@config_file_option
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.pass_context
def import_(ctx: click.Context, source: str | None, config_file: str | None, force: bool) -> None:
    """Convert an HF Accelerate config file (default: Accelerate's default_config.yaml) into plait's."""
    from plait.config import section_names
    from plait.config.accelerate_files import accelerate_default_path, is_accelerate_config
    from plait.config.yaml_files import load_config_file, parse_yaml
    from plait.errors import PlaitError
    from plait.plugins import BACKENDS_GROUP, installed_backends, selection_error

    path = Path(source) if source else accelerate_default_path()
    if not path.is_file():
        raise click.ClickException(
            f"no HF Accelerate config at {path}: pass its path (`plait config import PATH`), "
            f"or write one with `accelerate config`"
        )
    try:
        data, _ = parse_yaml(path)
        if not is_accelerate_config(data):
            raise click.ClickException(
                f"{path} is not an HF Accelerate config (it has neither distributed_type nor compute_environment); "
                f"a plait config file needs no import: use it with --config-file"
            )
        values = load_config_file(path, section_names(installed_backends()))
    except PlaitError as exc:
        raise click.ClickException(str(exc)) from None
    sections = values.pop("sections", {})
    backend = values.get("backend")
    problem = selection_error(BACKENDS_GROUP, backend) if backend else None
    if problem is not None:  # written all the same: the file is for a machine where it is installed
        click.echo(f"warning: {problem}", err=True)
    data = validate(ctx.obj, {**values, **sections})
    _write(_target(ctx, config_file), data, force, "the imported config")
    click.echo(f"(from {path})")
