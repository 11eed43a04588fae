"""The fsdp backend's command-line parts: ``plait launch`` flags, ``plait config`` questions, ``plait fsdp``.

Imported from hook bodies only (it imports click).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from plait_fsdp.options import AUTO_WRAP_POLICIES, REDUCE_DTYPES, STATE_DICT_TYPES


def launch_options() -> list[click.Option]:
    """Flags of ``plait launch`` filling the ``fsdp:`` section; each sets its key only when given.

    HF Accelerate's ``--fsdp_*`` flags come too: those spelled as plait's take the same values
    (``--fsdp_min_num_params``); the others (``--fsdp_sharding_strategy SHARD_GRAD_OP``,
    ``--fsdp_offload_params true``...) are mapped by :func:`accelerate_options`.
    """

    def choice(values: tuple[str, ...]) -> click.Choice[str]:
        return click.Choice(values, case_sensitive=False)

    return [
        click.Option(["--fsdp-auto-wrap-policy", "auto_wrap_policy"], type=choice(AUTO_WRAP_POLICIES), default=None,
                     help="Which sub-modules are sharded as groups of their own."),
        click.Option(["--fsdp-transformer-layer-cls-to-wrap", "transformer_layer_cls_to_wrap"], default=None,
                     help="Comma-separated class names of the layers to shard one by one (e.g. GPT2Block)."),
        click.Option(["--fsdp-min-num-params", "min_num_params"], type=click.IntRange(min=0), default=None,
                     help="Size-based wrapping: the fewest parameters a sub-module group holds."),
        click.Option(["--fsdp-reshard-after-forward/--fsdp-no-reshard-after-forward", "reshard_after_forward"],
                     default=None, help="Free gathered parameters after forward (FULL_SHARD) or keep them "
                                        "until backward (SHARD_GRAD_OP)."),
        click.Option(["--fsdp-offload-params/--fsdp-no-offload-params", "offload_params"], default=None,
                     help="Keep parameters, gradients and optimizer state in CPU memory."),
        click.Option(["--fsdp-activation-checkpointing/--fsdp-no-activation-checkpointing",
                      "activation_checkpointing"], default=None,
                     help="Recompute the wrapped layers' activations in backward."),
        click.Option(["--fsdp-cpu-ram-efficient-loading/--fsdp-no-cpu-ram-efficient-loading",
                      "cpu_ram_efficient_loading"], default=None,
                     help="Only the main process loads real weights; they are broadcast at prepare."),
        # LOCAL_STATE_DICT (FSDP1's) is accepted as the options accept it: SHARDED_STATE_DICT, with a warning.
        click.Option(["--fsdp-state-dict-type", "state_dict_type"],
                     type=choice((*STATE_DICT_TYPES, "LOCAL_STATE_DICT")), default=None,
                     help="Checkpoints as per-process shards or as one consolidated file."),
        click.Option(["--fsdp-reduce-dtype", "reduce_dtype"], type=click.Choice(REDUCE_DTYPES), default=None,
                     help="The dtype gradients are reduced in under mixed precision."),
        *accelerate_options(),
    ]


#: FSDP1's sharding strategies, by name and by number, as HF Accelerate takes them.
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2",
                       "1", "2", "3", "4", "5")


if TYPE_CHECKING:  # generic in click >= 8.2 only
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class _BoolOrStrategy(_ParamType):
    """``true``/``false`` (FSDP2's ``reshard_after_forward``) or an FSDP1 sharding strategy name."""

    name = "true|false|strategy"

    def __init__(self, booleans: bool) -> None:
        self.booleans = booleans

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, bool):
            return value
        text = str(value).strip()
        if self.booleans and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        if text.upper() in SHARDING_STRATEGIES:
            return text.upper()
        expected = "true, false or " if self.booleans else ""
        self.fail(f"{value!r} is not valid: expected {expected}one of {', '.join(SHARDING_STRATEGIES[:5])}", param, ctx)


_TRUE = ("1", "true", "yes", "y", "on", "t")
_FALSE = ("0", "false", "no", "n", "off", "f")
#: HF Accelerate's `--fsdp_*` flags that take a value where plait's spelling is a switch, or that plait's options
#: accept and ignore (FSDP1's), with the section key core's mapping of `fsdp_config` gives each.
_ACCELERATE_FLAGS: tuple[tuple[str, str, click.ParamType[Any]], ...] = (
    ("fsdp_sharding_strategy", "reshard_after_forward", _BoolOrStrategy(booleans=False)),
    ("fsdp_reshard_after_forward", "reshard_after_forward", _BoolOrStrategy(booleans=True)),
    ("fsdp_offload_params", "offload_params", click.BOOL),
    ("fsdp_activation_checkpointing", "activation_checkpointing", click.BOOL),
    ("fsdp_cpu_ram_efficient_loading", "cpu_ram_efficient_loading", click.BOOL),
    ("fsdp_version", "version", click.IntRange(1, 2)),
    ("fsdp_use_orig_params", "use_orig_params", click.BOOL),
    ("fsdp_sync_module_states", "sync_module_states", click.BOOL),
    ("fsdp_forward_prefetch", "forward_prefetch", click.BOOL),
    ("fsdp_backward_prefetch", "backward_prefetch", click.STRING),
)


def accelerate_options() -> list[click.Option]:
    """HF Accelerate's value-taking ``--fsdp_*`` flags (unlisted in help), each value mapped onto the section exactly
    as core maps Accelerate's ``fsdp_config`` (:func:`plait.config.accelerate_files.from_accelerate`)."""
    return [
        click.Option([f"--{flag}", key], type=kind, default=None, hidden=True, callback=_mapped(flag, key))
        for flag, key, kind in _ACCELERATE_FLAGS
    ]


def _mapped(flag: str, key: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def convert(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        section = from_accelerate_fsdp({flag: value})
        if set(section) != {key}:  # the table above and core's mapping disagree: a bug here, not the user's
            raise click.BadParameter(f"maps to {section!r}, expected fsdp option {key!r}", ctx, param)
        return section[key]

    return convert


def from_accelerate_fsdp(fsdp_config: dict[str, Any]) -> dict[str, Any]:
    """The ``fsdp`` section core makes of HF Accelerate's ``fsdp_config`` keys."""
    from plait.config.accelerate_files import from_accelerate

    section: dict[str, Any] = from_accelerate({"distributed_type": "FSDP", "fsdp_config": fsdp_config},
                                              "the command line")["fsdp"]
    return section


def ask_questions(ask: Callable[..., Any]) -> dict[str, Any]:
    """The ``fsdp:`` section from the ``plait config`` questionnaire (only answers away from the defaults)."""
    section: dict[str, Any] = {}
    policy = str(ask("FSDP auto-wrap policy", default="TRANSFORMER_BASED_WRAP", choices=list(AUTO_WRAP_POLICIES)))
    section["auto_wrap_policy"] = policy.upper()
    if policy.upper() == "TRANSFORMER_BASED_WRAP":
        classes = str(ask("Layer class names to wrap, comma-separated (empty: the model's _no_split_modules)",
                          default=""))
        if classes.strip():
            section["transformer_layer_cls_to_wrap"] = classes.strip()
    elif policy.upper() == "SIZE_BASED_WRAP":
        section["min_num_params"] = int(ask("Fewest parameters per wrapped group", default=100_000_000, type=int))
    strategy = str(ask("Sharding strategy", default="FULL_SHARD", choices=["FULL_SHARD", "SHARD_GRAD_OP"]))
    section["reshard_after_forward"] = strategy.upper() == "FULL_SHARD"
    for key, question in (
        ("offload_params", "Offload parameters and optimizer state to CPU?"),
        ("activation_checkpointing", "Checkpoint activations of the wrapped layers?"),
        ("cpu_ram_efficient_loading", "Load real weights on the main process only (CPU-RAM-efficient loading)?"),
    ):
        if _yes(ask(question, default="no", choices=["yes", "no"])):
            section[key] = True
    section["state_dict_type"] = str(
        ask("Checkpoint format", default="SHARDED_STATE_DICT", choices=list(STATE_DICT_TYPES))
    ).upper()
    return section


def _yes(answer: Any) -> bool:
    return answer is True or str(answer).strip().lower() in ("y", "yes", "true", "1")


def fsdp_group() -> click.Group:
    """The ``plait fsdp`` command group."""

    @click.group(name="fsdp", help="Tools for checkpoints of the fsdp backend.")
    def fsdp() -> None:
        pass

    @fsdp.command(name="merge-weights")
    @click.argument("checkpoint", type=click.Path(exists=True, file_okay=False))
    @click.argument("out", type=click.Path())
    @click.option("--index", default=0, show_default=True, type=click.IntRange(min=0),
                  help="Which prepared model of the checkpoint (0 for the first).")
    def merge_weights_command(checkpoint: str, out: str, index: int) -> None:
        """Write the model weights of sharded CHECKPOINT as one safetensors file OUT
        (a *.safetensors path, or a directory to write model.safetensors in)."""
        from plait.errors import PlaitError
        from plait_fsdp.merge import merge_weights

        try:
            written = merge_weights(checkpoint, out, index)
        except PlaitError as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"wrote {written}")

    return fsdp
