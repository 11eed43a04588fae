"""This process's place in the job, and the kinds of run (HF Accelerate's ``DistributedType``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class DistributedType(str, enum.Enum):
    """The kind of run, with every member name HF Accelerate has; compares equal to its string value.

    plait produces ``NO``, ``MULTI_CPU``, ``MULTI_GPU``, ``FSDP``, ``DEEPSPEED`` and ``XLA``; the members for
    hardware or libraries it does not run on (NPU, MLU, SDAA, MUSA, XPU, HPU, Neuron, Megatron-LM) exist so
    that scripts comparing against them work, and are never produced.
    """

    NO = "NO"
    MULTI_CPU = "MULTI_CPU"
    MULTI_GPU = "MULTI_GPU"
    MULTI_NPU = "MULTI_NPU"
    MULTI_MLU = "MULTI_MLU"
    MULTI_SDAA = "MULTI_SDAA"
    MULTI_MUSA = "MULTI_MUSA"
    MULTI_XPU = "MULTI_XPU"
    DEEPSPEED = "DEEPSPEED"
    FSDP = "FSDP"
    XLA = "XLA"
    MEGATRON_LM = "MEGATRON_LM"
    MULTI_HPU = "MULTI_HPU"
    MULTI_NEURON = "MULTI_NEURON"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ProcessEnvironment:
    """Where this process stands in the job. Checked once, when created."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size={self.world_size}: expected at least 1 process")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank={self.rank} is outside 0..{self.world_size - 1} (world_size={self.world_size})")
        if self.local_world_size < 1 or not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(
                f"local_rank={self.local_rank} is outside 0..{self.local_world_size - 1} "
                f"(local_world_size={self.local_world_size})"
            )

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_rank == 0

    @property
    def is_last_process(self) -> bool:
        return self.rank == self.world_size - 1
