"""``plait launch``: resolve and check the config, then run PyTorch's elastic launcher in this process.

Everything a user can get wrong (a missing script, ``--num-processes 0``, a backend
that is not installed, a bad backend option) is refused here, before any process
starts. The workers receive the resolved config as ``PLAIT_*`` variables
(:meth:`plait.config.Config.to_environ`). A backend may own launching
(``plait_launch``); otherwise ``torch.distributed.run`` (torchrun's agent) runs the
job (:mod:`plait_cli.torchrun`): rendezvous, restarts, multi-node, and Ctrl-C or SIGTERM stopping every worker.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import pluggy

from plait_cli.launch_flags import (
    PARADIGMS,
    LaunchCommand,
    backend_selector,
    core_params,
    fail,
    paradigm_backend,
    spell_both_ways,
)
from plait_cli.preemption import DEFAULT_GRACE, GRACE_VARIABLE, grace_seconds
from plait_cli.torchrun import torchrun_args, worker_threads

#: Flags that set top-level config keys, by parameter name.
CONFIG_FLAGS = (
    "num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port",
    "mixed_precision", "backend", "gradient_accumulation_steps", "cpu", "debug", "dynamo_backend",
)
_SECTION_PREFIX = "section__"


def build_launch_command(pm: pluggy.PluginManager) -> click.Command:
    """The ``launch`` command, with core's flags and those of every installed plugin."""
    params = core_params()
    hidden = spell_both_ways(params)
    taken = {opt for param in params if isinstance(param, click.Option) for opt in (*param.opts, *param.secondary_opts)}
    sections: dict[str, tuple[str, str, click.Option]] = {}
    from plait.plugins.hooks import Hooks

    for section, option in Hooks(pm).launch_options():
        if taken & {*option.opts, *option.secondary_opts}:
            print(f"plait: ignoring launch flag {'/'.join(option.opts)} of section {section!r}: already defined",
                  file=sys.stderr)
            continue
        taken.update((*option.opts, *option.secondary_opts))
        key = option.name or ""
        # A name of its own: several flags may set one key (a switch and HF Accelerate's `--flag true`).
        option.name = f"{_SECTION_PREFIX}{len(sections)}"
        sections[option.name] = (section, key, option)
        params.insert(len(params) - 3, option)
    hidden |= spell_both_ways(params)

    def callback(**values: Any) -> None:
        section_values: dict[str, dict[str, Any]] = {}
        section_flags: dict[str, dict[str, str]] = {}
        for name, (section, key, option) in sections.items():
            value = values.pop(name)
            if value is None:
                continue
            flag = option.secondary_opts[0] if value is False and option.secondary_opts else option.opts[0]
            earlier = section_flags.setdefault(section, {}).get(key)
            if earlier is not None and section_values[section][key] != value:
                raise fail(f"{earlier} and {flag} both set {section} option {key}, to {section_values[section][key]!r} "
                           f"and {value!r}: give one of them")
            section_values.setdefault(section, {})[key] = value
            section_flags[section][key] = flag
        request = LaunchRequest(
            flags={key: values[key] for key in CONFIG_FLAGS if values[key] is not None},
            sections=section_values,
            section_flags={section: tuple(flags.values()) for section, flags in section_flags.items()},
            paradigms=tuple(name for name in PARADIGMS if values[name]),
            script=values["script"],
            script_args=tuple(values["script_args"]),
            module=values["module"],
            no_python=values["no_python"],
            config_file=values["config_file"],
            rdzv_backend=values["rdzv_backend"],
            rdzv_conf=values["rdzv_conf"],
            role=values["role"],
            max_restarts=values["max_restarts"],
            monitor_interval=values["monitor_interval"],
            gpu_ids=values["gpu_ids"],
            cpu_threads=values["num_cpu_threads_per_process"],
            log_dir=values["log_dir"],
            tee=values["tee"],
            quiet=values["quiet"],
        )
        state = click.get_current_context().obj
        plan = make_plan(request, state.pm, os.environ)
        sys.exit(execute(plan, state.pm))

    return LaunchCommand(
        "launch",
        params=params,
        callback=callback,
        hidden_opts=hidden,
        help=(
            "Run SCRIPT [ARGS] on every process of the job (`-m module` for a module). Flags override the config "
            "file; the resolved config reaches the workers as PLAIT_* variables. Uses torch.distributed.run "
            "(torchrun's elastic agent); under SLURM run it once per node: `srun --ntasks-per-node=1 plait launch ...`."
        ),
        epilog=(
            "HF Accelerate's `accelerate launch` flags work too, as Accelerate spells them: --num_processes, "
            "--multi_gpu, --use_fsdp, --use_deepspeed, --zero_stage, --fsdp_sharding_strategy... Those plait "
            "cannot honour (--tpu, --use_megatron_lm, --fp8_backend...) are refused with what to use instead.\n\n"
            "With --max-restarts N, the workers of every machine are restarted together after a failure (each "
            "restart a new rendezvous; TORCHELASTIC_RESTART_COUNT tells them which), to resume from their own "
            "checkpoint.\n\n"
            f"Preemption: on SIGTERM (SLURM, a Kubernetes eviction, a spot reclaim) every worker gets SIGTERM and "
            f"{GRACE_VARIABLE} seconds (default {DEFAULT_GRACE}) to finish its step and save before it is killed; "
            f"the launcher then exits with 143. Under SLURM, machine 0's launcher then requeues the job with "
            f"`scontrol requeue` if it is requeueable (sbatch --requeue): give SLURM's KillWait more than the grace."
        ),
        short_help="Run a training script on every process of the job.",
        context_settings={"allow_interspersed_args": False},
    )


@dataclass
class LaunchRequest:
    """What the user asked for on the command line."""

    script: str
    script_args: tuple[str, ...] = ()
    flags: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The flags that set each section's values, to name them in messages.
    section_flags: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: HF Accelerate's paradigm flags given (``multi_gpu``, ``use_fsdp``, ``use_deepspeed``).
    paradigms: tuple[str, ...] = ()
    module: bool = False
    no_python: bool = False
    config_file: str | None = None
    rdzv_backend: str = "static"
    rdzv_conf: str | None = None
    role: str | None = None
    max_restarts: int = 0
    monitor_interval: float = 0.1
    gpu_ids: str | None = None
    #: Each worker's OMP_NUM_THREADS.
    cpu_threads: int | None = None
    log_dir: str | None = None
    tee: str | None = None
    quiet: bool = False


@dataclass
class LaunchPlan:
    """A checked launch: the config the workers get, torchrun's arguments, the environment to add."""

    config: Any
    command: list[str]
    torchrun_args: list[str]
    env: dict[str, str]
    nproc_per_node: int
    quiet: bool = False
    #: The SLURM job that machine 0's launcher requeues after a SIGTERM (``SLURM_JOB_ID``), if any.
    requeue_job: str | None = None


_fail = fail


def make_plan(request: LaunchRequest, pm: pluggy.PluginManager, environ: Mapping[str, str]) -> LaunchPlan:
    """Resolve and check everything; raise ``click.UsageError`` (naming the value, what was expected and
    what to do) before any process starts."""
    from plait.config import DEFAULT, coerce, resolve_config
    from plait.errors import PlaitError
    from plait.plugins import BACKENDS_GROUP, choose_backend, installed_backends, selection_error
    from plait.plugins.catalog import BUILTIN_BACKEND, MULTI_PROCESS_BACKEND
    from plait.plugins.hooks import Hooks
    from plait.process.launch_variables import slurm_machines

    for key in ("num_processes", "num_machines", "gradient_accumulation_steps"):
        value = request.flags.get(key)
        if value is not None and value < 1:
            raise _fail(f"--{key.replace('_', '-')} {value} is not valid: expected a whole number of at least 1")
    try:  # each value named by its flag (`--mixed-precision fp8: ...`), before the config names them by key
        for key, value in request.flags.items():
            coerce(key, value, _flag(key, value))
    except PlaitError as exc:
        raise _fail(str(exc)) from None
    chosen, selector = paradigm_backend(request.paradigms, request.flags.get("backend"))
    environ = dict(environ)
    if request.config_file is not None:
        if not Path(request.config_file).is_file():
            raise _fail(f"--config-file {request.config_file!r} does not exist: pass a YAML file (`plait config` writes one)")
        environ["PLAIT_CONFIG_FILE"] = request.config_file
    arguments: dict[str, Any] = dict(request.flags)
    if chosen is not None:
        arguments["backend"] = chosen
    if request.sections:
        arguments["sections"] = request.sections
    try:
        slurm = slurm_machines(environ)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if slurm is not None and "num_machines" not in arguments and "machine_rank" not in arguments:
        for key, value in slurm.items():
            arguments.setdefault(key, value)
    if request.gpu_ids and request.gpu_ids != "all" and "num_processes" not in arguments:
        arguments["num_processes"] = len(request.gpu_ids.split(",")) * int(arguments.get("num_machines", 1))
    if "multi_gpu" in request.paradigms and arguments.get("num_processes", 2) < 2:
        given = _flag("num_processes", 1) if "num_processes" in request.flags else f"--gpu-ids {request.gpu_ids}"
        raise _fail(f"--multi_gpu needs at least 2 processes, but {given} asks for 1: pass --num_processes 2 or more "
                    f"(or two --gpu_ids), or drop --multi_gpu to run one process")

    def describe(key: str, value: Any) -> str:
        return selector if key == "backend" and selector else _flag(key, value)

    try:
        config = resolve_config(arguments, environ, installed_backends(), describe_argument=describe)
    except PlaitError as exc:
        raise _fail(str(exc)) from None

    num_processes = config.num_processes
    processes_source = config.source_of("num_processes")
    if config.source_rank("num_processes") == DEFAULT and config.backend != BUILTIN_BACKEND:
        num_processes = max(1, _local_gpus(config)) * config.num_machines
        processes_source = f"one process per GPU of {config.num_machines} machine(s)"
    if num_processes % config.num_machines:
        raise _fail(
            f"--num-processes {num_processes} is not a multiple of --num-machines {config.num_machines}: "
            f"every machine runs the same number of processes"
        )
    try:  # a process count from a flag beats a single-process backend from the file
        backend = choose_backend(config, num_processes, processes_source, config.source_rank("num_processes"))
    except PlaitError as exc:
        raise _fail(str(exc)) from None
    problem = selection_error(BACKENDS_GROUP, backend, config.disable_plugins)
    if problem is not None:
        why = "" if backend == config.backend else f" ({processes_source} runs the {MULTI_PROCESS_BACKEND} backend by default)"
        raise _fail(f"{problem}{why}")
    _check_sections(request, backend, config.source_of("backend") if config.backend else f"the default for {processes_source}")
    try:  # the backend checks its own section now rather than in every worker
        Hooks(pm).backend_options(backend, dict(config.section(backend)))
    except PlaitError as exc:
        raise _fail(str(exc)) from None
    if config.num_machines > 1 and not config.main_process_ip:
        raise _fail(
            f"--num-machines {config.num_machines} needs --main-process-ip: the address of machine 0, "
            f"the same on every machine"
        )
    command = _command(request)
    config = _replace(config, backend=backend, num_processes=num_processes)
    env = config.to_environ()
    if request.gpu_ids and request.gpu_ids != "all":
        env["CUDA_VISIBLE_DEVICES"] = request.gpu_ids
    threads = request.cpu_threads if request.cpu_threads is not None else worker_threads(
        num_processes // config.num_machines, environ, on_cpu=_local_gpus(config) == 0)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        grace = grace_seconds(environ)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    nproc = num_processes // config.num_machines
    requeue_job = environ.get("SLURM_JOB_ID") if config.machine_rank == 0 else None
    return LaunchPlan(config, command, torchrun_args(request, config, nproc, grace), env, nproc, request.quiet,
                      requeue_job or None)


def _check_sections(request: LaunchRequest, backend: str, why: str) -> None:
    """Flags of another backend's section than the one that runs are a mistake: refuse them."""
    for section in request.sections:
        if section == backend:
            continue
        flags = request.section_flags.get(section) or (f"the {section} options",)
        raise _fail(
            f"{', '.join(flags)} set{'s' if len(flags) == 1 else ''} options of the {section} backend, but backend "
            f"{backend} runs ({why}): select {section} with {backend_selector(section)}, or drop "
            f"{'it' if len(flags) == 1 else 'them'}"
        )


def _flag(key: str, value: Any) -> str:
    """How a value given on the command line is named in messages."""
    flag = f"--{key.replace('_', '-')}"
    return flag if value is True else f"{flag} {value}"


def _local_gpus(config: Any) -> int:
    if config.cpu:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _replace(config: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(config, **changes)


def _command(request: LaunchRequest) -> list[str]:
    if request.no_python:
        if request.module:
            raise _fail("--module and --no_python cannot go together: a module runs with python -m; drop one of them")
        if not Path(request.script).is_file() and shutil.which(request.script) is None:
            raise _fail(f"program {request.script!r} (--no_python) is neither a file nor on PATH")
        return [request.script, *request.script_args]
    if request.module:
        try:
            found = importlib.util.find_spec(request.script) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise _fail(f"module {request.script!r} was not found on this Python's path ({sys.executable})")
        return ["-m", request.script, *request.script_args]
    if not Path(request.script).is_file():
        raise _fail(
            f"script {request.script!r} does not exist (working directory {os.getcwd()}); "
            f"pass a Python file, or -m for a module"
        )
    return [request.script, *request.script_args]


def execute(plan: LaunchPlan, pm: pluggy.PluginManager) -> int:
    """Run the job; return its exit code (the first failed worker's, 128+N for a signal N)."""
    os.environ.update(plan.env)
    from plait.plugins.hooks import Hooks

    owned = Hooks(pm).launch(plan.config, plan.command)
    if owned is not None:
        return int(owned)
    from plait_cli.torchrun import run_job

    return run_job(plan.torchrun_args, plan.config.machine_rank, plan.quiet, plan.requeue_job)
