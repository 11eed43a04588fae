"""The zero backend's command-line parts: ``plait launch`` flags and ``plait config`` questions.

Imported from hook bodies only (it imports click).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from plait_zero.options import OFFLOAD_DEVICES, ZeroOptions


def launch_options() -> list[click.Option]:
    """Flags of ``plait launch`` filling the ``zero:`` section; each sets its key only when given.

    HF Accelerate's DeepSpeed flags (``--zero_stage``, ``--offload_optimizer_device``, ``--gradient_clipping``,
    ``--zero3_init_flag true``...) set the keys core's import of Accelerate's ``deepspeed_config`` maps them to.
    """
    devices = click.Choice(OFFLOAD_DEVICES, case_sensitive=False)
    return [
        click.Option(["--zero-stage", "stage"], type=click.IntRange(1, 3), default=None,
                     help="ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also parameters."),
        click.Option(["--zero-offload-optimizer-device", "--offload_optimizer_device", "offload_optimizer_device"],
                     type=devices, default=None, help="Where optimizer states live: none, cpu or nvme."),
        click.Option(["--zero-offload-param-device", "--offload_param_device", "offload_param_device"], type=devices,
                     default=None, help="Where parameters rest (stage 3): none, cpu or nvme."),
        click.Option(["--zero-offload-optimizer-nvme-path", "--offload_optimizer_nvme_path",
                      "offload_optimizer_nvme_path"], default=None, help="NVMe directory for offloaded optimizer states."),
        click.Option(["--zero-offload-param-nvme-path", "--offload_param_nvme_path", "offload_param_nvme_path"],
                     default=None, help="NVMe directory for offloaded parameters."),
        click.Option(["--zero-gradient-clipping", "--gradient_clipping", "gradient_clipping"],
                     type=click.FloatRange(min=0), default=None,
                     help="Clip the gradient norm at this value (0: no clipping, the default)."),
        click.Option(["--zero3-init/--no-zero3-init", "zero3_init"], default=None,
                     help="Build models partitioned under deepspeed.zero.Init (stage 3)."),
        click.Option(["--zero3-save-16bit-model/--no-zero3-save-16bit-model", "save_16bit_model"], default=None,
                     help="Gather 16-bit weights when saving a stage-3 model."),
        click.Option(["--zero-config-file", "--deepspeed_config_file", "config_file"], default=None,
                     help="A DeepSpeed JSON config; its \"auto\" values are filled by plait."),
        # HF Accelerate's spellings of the two switches take a value: `--zero3_init_flag true`.
        click.Option(["--zero3_init_flag", "zero3_init"], type=click.BOOL, default=None, hidden=True),
        click.Option(["--zero3_save_16bit_model", "save_16bit_model"], type=click.BOOL, default=None, hidden=True),
    ]


def ask_questions(ask: Callable[..., Any]) -> dict[str, Any]:
    """The ``zero:`` section from the ``plait config`` questionnaire, checked as options."""
    section: dict[str, Any] = {}
    config_file = ask("DeepSpeed JSON config file (empty for none)", default="")
    if config_file:
        section["config_file"] = config_file
    section["stage"] = int(ask("ZeRO stage (1: optimizer states, 2: +gradients, 3: +parameters)", default="2",
                               choices=["1", "2", "3"]))
    section["offload_optimizer_device"] = ask("Offload optimizer states to", default="none", choices=list(OFFLOAD_DEVICES))
    if section["offload_optimizer_device"] == "nvme":
        section["offload_optimizer_nvme_path"] = ask("NVMe directory for optimizer states", default="/nvme")
    if section["stage"] == 3:
        section["offload_param_device"] = ask("Offload parameters to", default="none", choices=list(OFFLOAD_DEVICES))
        if section["offload_param_device"] == "nvme":
            section["offload_param_nvme_path"] = ask("NVMe directory for parameters", default="/nvme")
        section["zero3_init"] = ask("Build models partitioned (deepspeed.zero.Init)? [yes/no]", default="no",
                                    choices=["yes", "no"]) == "yes"
        section["save_16bit_model"] = ask("Gather 16-bit weights when saving the model? [yes/no]", default="no",
                                          choices=["yes", "no"]) == "yes"
    clip = float(ask("Clip the gradient norm at (0: no clipping)", default="0", type=float))
    if clip > 0:
        section["gradient_clipping"] = clip
    ZeroOptions.from_section(section)  # the answers must make valid options
    return section
