"""``plait launch``'s flag spellings: both HF Accelerate's (``--num_processes``) and plait's (``--num-processes``),
Accelerate's own flags (``--multi_gpu``, ``--use_fsdp``, ``--use_deepspeed``...), and the ones plait cannot
honour, refused with what to use instead before any process starts.

The flags a backend owns (``--zero_stage``, ``--fsdp_sharding_strategy``...) are that backend's
(``plait_launch_options``); here only their spellings and, when the backend is missing, the message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import click

from plait.plugins.install_commands import install_hint

NOTHING_STARTED = "; nothing was started"

#: The torch rendezvous backend each ``--rdzv-backend`` runs: torch's own, each restart with a new store for its
#: workers (:mod:`plait_cli.rendezvous` registers them in the launcher's process).
RENDEZVOUS_BACKENDS = {"static": "plait-static", "c10d": "plait-c10d"}
#: The ``--rdzv-conf`` key that gives ``plait-static`` this machine's rank.
MACHINE_RANK_KEY = "machine_rank"

#: HF Accelerate's paradigm flags, by parameter name, and the backend each selects.
PARADIGMS = {"multi_gpu": "ddp", "use_fsdp": "fsdp", "use_deepspeed": "zero"}

_TPU = ("plait's launcher does not start TPU jobs; for XLA devices select the xla backend: --backend xla, "
        f"installed by {install_hint('xla')}")
_FP8 = "plait has no FP8 training (Transformer Engine, MS-AMP, torchao): use --mixed_precision bf16"
_MEGATRON = "plait has no Megatron-LM backend: shard the model with --use_fsdp or --use_deepspeed"
_PARALLELISM = ("plait has no N-D parallelism (tensor, context, sequence parallel): --use_fsdp shards the model "
                "across every process")
_MULTINODE = ("plait starts every machine's processes through torch.distributed.run: run `plait launch` on each machine "
              "with --num_machines, --machine_rank and --main_process_ip (or once per node under srun)")
_DYNAMO = ("plait compiles prepared models with --dynamo_backend only: for mode, fullgraph, dynamic shapes or regional "
           "compilation call torch.compile(model, ...) in your script")
_SAGEMAKER = "plait does not start Amazon SageMaker jobs: run `plait launch` on the instances"
#: HF Accelerate flags that plait cannot honour (Accelerate's spelling, without ``--``), and what to use instead.
UNSUPPORTED = {
    **dict.fromkeys(("tpu", "tpu_cluster", "no_tpu_cluster", "tpu_use_sudo", "vm", "env", "downcast_bf16"), _TPU),
    "use_xpu": "plait runs on CUDA GPUs, Apple's MPS device and CPUs, not on Intel XPUs: drop the flag, or --cpu",
    "ipex": "plait does not use Intel Extension for PyTorch: drop the flag (--cpu runs on CPU without it)",
    "use_mps_device": "plait uses Apple's MPS device by itself when no CUDA GPU is present: drop the flag",
    "use_megatron_lm": _MEGATRON,
    "use_parallelism_config": _PARALLELISM,
    "mpirun_hostfile": _MULTINODE,
    **dict.fromkeys(("deepspeed_hostfile", "deepspeed_inclusion_filter", "deepspeed_exclusion_filter",
                     "deepspeed_multinode_launcher"), "plait runs DeepSpeed through torch.distributed.run, not "
                    "DeepSpeed's multi-node launcher: run `plait launch --use_deepspeed` on each machine with "
                    "--num_machines, --machine_rank and --main_process_ip (or once per node under srun)"),
    "deepspeed_moe_layer_cls_names": "plait's zero backend does not mark MoE layers as DeepSpeed leaf modules: drop "
                                     "the flag, or call deepspeed.utils.set_z3_leaf_modules in your script",
    "enable_cpu_affinity": "plait does not pin workers to CPUs: run it under numactl or taskset",
    **dict.fromkeys(("dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic", "dynamo_use_regional_compilation"),
                    _DYNAMO),
    **dict.fromkeys(("aws_access_key_id", "aws_secret_access_key"), _SAGEMAKER),
}
_UNSUPPORTED_PREFIXES = (("megatron_lm_", _MEGATRON), ("fp8_", _FP8), ("parallelism_config_", _PARALLELISM))
#: The flags of a first-party backend (prefixes of their underscore spelling: HF Accelerate's, and plait-xla's
#: ``--xla-spmd``/``--xla-fsdp``), to name what to install when it is not.
_BACKEND_FLAGS = (
    ("fsdp_", "fsdp"), ("ddp_", "ddp"), ("zero_", "zero"), ("zero3_", "zero"), ("offload_", "zero"),
    ("deepspeed_config_file", "zero"), ("gradient_clipping", "zero"), ("xla_", "xla"),
)


def fail(message: str) -> click.UsageError:
    """The error of a launch refused before any process started."""
    return click.UsageError(message + NOTHING_STARTED)


def core_params() -> list[click.Parameter]:
    """Core's flags; each also takes HF Accelerate's underscore spelling (``--num_processes``), unlisted in help."""
    return [
        click.Option(["--num-processes"], type=int, default=None,
                     help="Processes in all, across machines (default: the config's, else one per GPU, else 1)."),
        click.Option(["--num-machines"], type=int, default=None, help="Machines in the job (default 1)."),
        click.Option(["--machine-rank"], type=int, default=None, help="This machine's rank, 0 to num_machines-1."),
        click.Option(["--main-process-ip"], default=None, help="Address of machine 0 (multi-machine jobs)."),
        click.Option(["--main-process-port"], type=int, default=None, help="Port on machine 0 (default 29500; on one machine, a free one the system assigns)."),
        click.Option(["--rdzv-backend"], type=click.Choice(["static", "c10d"]), default="static", show_default=True,
                     help="Rendezvous: static (fixed machine ranks) or c10d (elastic); each restart meets anew."),
        click.Option(["--max-restarts"], type=click.IntRange(min=0), default=0, show_default=True,
                     help="Restart the workers this many times after a failure."),
        click.Option(["--monitor-interval"], type=click.FloatRange(min=0, min_open=True), default=0.1,
                     show_default=True, help="Seconds between checks of the workers' state."),
        # fp8 is accepted here so that the config's check refuses it with what to use instead.
        click.Option(["--mixed-precision"], type=click.Choice(["no", "fp16", "bf16", "fp8"]), default=None,
                     help="Autocast precision of every worker (fp8 is refused: plait has no FP8 training)."),
        click.Option(["--backend"], default=None, help="The backend to run (single, ddp, or an installed plugin's)."),
        click.Option(["--gradient-accumulation-steps"], type=int, default=None,
                     help="Micro-batches per optimizer step in accumulate()."),
        click.Option(["--config-file"], type=click.Path(dir_okay=False), default=None,
                     help="Config file (default: $XDG_CONFIG_HOME/plait/default_config.yaml, if present)."),
        click.Option(["--cpu"], is_flag=True, default=None, help="Run on CPU even if GPUs are present."),
        click.Option(["--gpu-ids"], default=None,
                     help="Comma-separated GPU ids this machine uses (CUDA_VISIBLE_DEVICES)."),
        click.Option(["--log-dir"], type=click.Path(file_okay=False), default=None,
                     help="Write each worker's stdout/stderr under this directory."),
        click.Option(["-t", "--tee"], default=None, help="Also copy worker output to the console: 0 none, 1 stdout, "
                     "2 stderr, 3 both (needs --log-dir), or per rank as 0:3,1:1."),
        *accelerate_params(),
        click.Option(["-m", "--module"], is_flag=True, help="SCRIPT is a module name, run as `python -m SCRIPT`."),
        click.Argument(["script"]),
        click.Argument(["script_args"], nargs=-1, type=click.UNPROCESSED),
    ]


def accelerate_params() -> list[click.Option]:
    """Core's flags that only HF Accelerate's users know: the paradigm flags and launcher details."""
    return [
        click.Option(["--multi-gpu"], is_flag=True, default=False,
                     help="HF Accelerate's name for --backend ddp (several processes, on GPUs or, with --cpu, CPUs)."),
        click.Option(["--use-fsdp"], is_flag=True, default=False, help="HF Accelerate's name for --backend fsdp."),
        click.Option(["--use-deepspeed"], is_flag=True, default=False, help="HF Accelerate's name for --backend zero."),
        click.Option(["--dynamo-backend"], default=None,
                     help="torch.compile prepared models with this backend (inductor, eager...; no: not compiled)."),
        click.Option(["--debug"], is_flag=True, default=None,
                     help="Check that every process passes tensors of the same shapes to each collective."),
        click.Option(["--num-cpu-threads-per-process"], type=click.IntRange(min=1), default=None,
                     help="CPU threads of each worker (OMP_NUM_THREADS)."),
        click.Option(["--rdzv-conf"], default=None, help="More rendezvous settings for torchrun: key=value,key=value."),
        click.Option(["--role"], default=None, help="The workers' role name, for torchrun's logs."),
        click.Option(["--no-python"], is_flag=True, default=False,
                     help="SCRIPT is a program, run as it is rather than with python."),
        click.Option(["-q", "--quiet"], is_flag=True, default=False,
                     help="When a worker fails, print its rank and exit code only, not its traceback."),
        # Accepted as in HF Accelerate, with nothing to do: the static rendezvous always meets at the main
        # process's address, and the function to run is Accelerate's TPU launcher's only.
        click.Option(["--same-network"], is_flag=True, default=False, hidden=True),
        click.Option(["--main-training-function"], default=None, hidden=True),
    ]


def spell_both_ways(params: Iterable[click.Parameter]) -> set[str]:
    """Give every long flag its other spelling (``--num-processes`` and ``--num_processes``) unless another flag
    already has it; return the spellings to leave out of ``--help`` (underscores, and the twins of those)."""
    params = [p for p in params if isinstance(p, click.Option)]
    taken = {opt for p in params for opt in (*p.opts, *p.secondary_opts)}
    hidden = {opt for opt in taken if opt.startswith("--") and "_" in opt[2:]}
    for param in params:
        for opts in (param.opts, param.secondary_opts):
            for opt in list(opts):
                if not opt.startswith("--"):
                    continue
                body = opt[2:]
                twin = "--" + (body.replace("_", "-") if "_" in body else body.replace("-", "_"))
                if twin not in taken:
                    opts.append(twin)
                    taken.add(twin)
                    hidden.add(twin)
    return hidden


class LaunchCommand(click.Command):
    """``plait launch``: help without the second spellings; flags plait cannot honour refused with advice."""

    def __init__(self, *args: Any, hidden_opts: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_opts = hidden_opts

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        saved = [(p, p.opts, p.secondary_opts) for p in self.get_params(ctx) if isinstance(p, click.Option)]
        for param, opts, secondary in saved:
            param.opts = [o for o in opts if o not in self.hidden_opts] or opts
            param.secondary_opts = [o for o in secondary if o not in self.hidden_opts]
        try:
            super().format_options(ctx, formatter)
        finally:
            for param, opts, secondary in saved:
                param.opts, param.secondary_opts = opts, secondary

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        given = list(args)
        try:
            return super().parse_args(ctx, self._accelerate_values(ctx, args))
        except click.NoSuchOption as exc:
            advice = unknown_flag_advice(exc.option_name, given)
            if advice is None:
                raise
            raise click.UsageError(advice + NOTHING_STARTED, ctx) from None

    def _accelerate_values(self, ctx: click.Context, args: list[str]) -> list[str]:
        """HF Accelerate's dash spelling of a flag that takes a value where plait's same spelling is a switch
        (``--fsdp-offload-params true``): when the next argument is a value of Accelerate's flag, use that flag.
        Only plait's flags are read, up to the script; the script's own arguments are left alone."""
        options = [p for p in self.get_params(ctx) if isinstance(p, click.Option)]
        owner = {opt: p for p in options for opt in (*p.opts, *p.secondary_opts)}
        takes_value = {opt for p in options if not p.is_flag for opt in p.opts}
        valued = {"--" + opt[2:].replace("_", "-"): p for p in options if not p.is_flag for opt in p.opts
                  if opt.startswith("--") and "_" in opt[2:]}
        args = list(args)
        index = 0
        while index < len(args) and args[index].startswith("-") and args[index] != "--":
            flag, equals, value = args[index].partition("=")
            option, switch = valued.get(flag), owner.get(flag)
            if option is not None and switch is not None and switch.is_flag:
                if equals:  # `--fsdp-offload-params=true`: a switch takes no value, so it is Accelerate's flag
                    args[index] = f"{option.opts[0]}={value}"
                elif index + 1 < len(args) and _accepts(option, args[index + 1], ctx):
                    args[index] = option.opts[0]
                    index += 2
                    continue
            index += 2 if args[index] in takes_value else 1
        return args


def _accepts(option: click.Option, value: str, ctx: click.Context) -> bool:
    try:
        option.type.convert(value, option, ctx)
    except click.ClickException:
        return False
    return True


def unknown_flag_advice(option: str, args: Sequence[str]) -> str | None:
    """Why an unknown ``option`` cannot be used, when plait knows: a flag of HF Accelerate's that plait cannot
    honour, or a flag of a backend that is not installed (or is blocked); ``None`` otherwise."""
    import os

    from plait.config import disabled_plugins
    from plait.plugins.catalog import selection_error
    from plait.plugins.discovery import BACKENDS_GROUP

    name = option.lstrip("-").replace("-", "_")
    advice = UNSUPPORTED.get(name) or next((a for prefix, a in _UNSUPPORTED_PREFIXES if name.startswith(prefix)), None)
    if advice is not None:
        return f"{option} is not supported: {advice}"
    disabled = disabled_plugins(os.environ)
    owners = [*selected_backends(args), *(backend for prefix, backend in _BACKEND_FLAGS if name.startswith(prefix))]
    for backend in dict.fromkeys(owners):
        problem = selection_error(BACKENDS_GROUP, backend, disabled)
        if problem is not None:
            return f"{option} needs the {backend} backend: {problem}"
    return None


def selected_backends(args: Sequence[str]) -> list[str]:
    """The backends that flags among ``args`` select (``--use_deepspeed``, ``--backend zero``...), before parsing."""
    found: list[str] = []
    for index, arg in enumerate(args):
        flag, _, value = arg.partition("=")
        flag = flag.replace("_", "-")
        if flag in ("--multi-gpu", "--use-fsdp", "--use-deepspeed"):
            found.append(PARADIGMS[flag[2:].replace("-", "_")])
        elif flag == "--backend":
            value = value or (args[index + 1] if index + 1 < len(args) else "")
            if value:
                found.append(value)
    return found


def paradigm_backend(paradigms: Sequence[str], backend: str | None) -> tuple[str | None, str | None]:
    """The backend that HF Accelerate's paradigm flags (and ``--backend``) select, and the flag that names it.

    :raises click.UsageError: when they select different backends.
    """
    chosen = [(f"--{p}", PARADIGMS[p]) for p in paradigms]
    if backend is not None:
        chosen.append((f"--backend {backend}", backend))
    if len({name for _, name in chosen}) > 1:
        given = " and ".join(f"{flag} (backend {name})" for flag, name in chosen)
        raise fail(
            f"{given} cannot go together: choose one backend (HF Accelerate too allows one of --multi_gpu, "
            f"--use_fsdp and --use_deepspeed at a time)"
        )
    if not chosen:
        return None, None
    return chosen[0][1], chosen[0][0]


def backend_selector(backend: str) -> str:
    """How to select ``backend`` on the command line, in messages."""
    accelerate = next((f" or --{flag}" for flag, name in PARADIGMS.items() if name == backend), "")
    return f"--backend {backend}{accelerate}"
