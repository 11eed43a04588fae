"""Writes what the worker was told, as plait resolves it: ``python report_config.py OUT`` (rank 0 writes OUT)."""

import dataclasses
import json
import os
import sys

import plait

accelerator = plait.Accelerator()
options = accelerator.backend_options
if accelerator.is_main_process:
    config = accelerator.config
    report = {
        "backend": accelerator.backend,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "cpu": config.cpu,
        "debug": config.debug,
        "dynamo_backend": getattr(config, "dynamo_backend", None),
        "device": str(accelerator.device),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "backend_options": (
            {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
            if dataclasses.is_dataclass(options) else options
        ),
    }
    with open(sys.argv[1], "w", encoding="utf-8") as out:
        json.dump(report, out, default=repr)
