"""This process's place in the job: what the launcher said (torchrun's or SLURM's variables), the
process group, and the Accelerator's process part (rank, device, barriers, running code on some
processes only)."""

from __future__ import annotations

from plait.process.environment import DistributedType, ProcessEnvironment

__all__ = ["DistributedType", "ProcessEnvironment", "ProcessState"]


def __getattr__(name: str) -> object:
    if name == "ProcessState":  # it imports torch; the rest of this package does not
        from plait.process.process_state import ProcessState

        return ProcessState
    raise AttributeError(f"module 'plait.process' has no attribute {name!r}")
