"""The ``int8_ddp:`` config section, validated once when the Accelerator (or ``plait launch``) starts.

A frozen dataclass with ``from_section``, as plait's own backends have: the section comes from the YAML file, the
``PLAIT_INT8_DDP`` variable (what ``plait launch --int8-ddp-bucket-cap-mb`` sets) and
``Accelerator(backend_options=...)``, merged by plait; unknown keys and bad values are refused here, by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plait.config import backend_section
from plait.errors import ConfigError

NAME = "int8_ddp"


@dataclass(frozen=True)
class Int8Options:
    """Options of the ``int8_ddp`` backend."""

    #: DistributedDataParallel's gradient bucket size: each bucket is quantized with its own scale.
    bucket_cap_mb: float = 25.0
    #: Buckets smaller than this many elements travel as float32 (for them the int8 round trip saves nothing).
    min_elements: int = 0

    def __post_init__(self) -> None:
        cap = self.bucket_cap_mb
        if isinstance(cap, bool) or not isinstance(cap, (int, float)) or cap <= 0:
            raise ConfigError(f"{NAME} option bucket_cap_mb={cap!r} is not valid: expected a positive number of MB")
        small = self.min_elements
        if isinstance(small, bool) or not isinstance(small, int) or small < 0:
            raise ConfigError(f"{NAME} option min_elements={small!r} is not valid: expected a whole number, 0 or more")

    @classmethod
    def from_section(cls, options: Mapping[str, Any] | object) -> Int8Options:
        """Build from a config section (a mapping), or return an ``Int8Options`` given in code."""
        section = backend_section(NAME, options, cls)
        if isinstance(section, Int8Options):
            return section
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = [key for key in section if key not in names]
        if unknown:
            raise ConfigError(f"unknown {NAME} option {unknown[0]!r}: valid options are {', '.join(names)}")
        return cls(**dict(section))
