"""The fsdp backend's command-line parts: ``plait launch`` flags, ``plait config`` questions, ``plait fsdp``.

Imported from hook bodies only (it imports click).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from plait_fsdp.options import AUTO_WRAP_POLICIES, REDUCE_DTYPES, STATE_DICT_TYPES


def launch_options() -> list[click.Option]:
    """Flags of ``plait launch`` filling the ``fsdp:`` section; each sets its key only when given."""

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
        click.Option(["--fsdp-state-dict-type", "state_dict_type"], type=choice(STATE_DICT_TYPES), default=None,
                     help="Checkpoints as per-process shards or as one consolidated file."),
        click.Option(["--fsdp-reduce-dtype", "reduce_dtype"], type=click.Choice(REDUCE_DTYPES), default=None,
                     help="The dtype gradients are reduced in under mixed precision."),
    ]


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
