"""Helpers of the tests of ``plait.state``, ``plait.logging``, ``plait.utils.operations`` and the launchers:
a fresh shared state for every test, and a pretend rank of a pretend job."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import plait
from plait import Accelerator
from plait.collectives import Collectives
from plait.process import ProcessEnvironment
from plait.state import AcceleratorState, GradientState

__all__ = ["Pretend", "fresh_state", "pretend"]


class RecordingCollectives(Collectives):
    def __init__(self, environment: ProcessEnvironment, device: torch.device, events: list[str]) -> None:
        super().__init__(environment, device)
        self.events = events

    def barrier(self) -> None:
        self.events.append("barrier")


class Pretend:
    """A plugin placing this process at ``rank`` of ``world_size`` (one machine), barriers recorded."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.environment = ProcessEnvironment(rank=rank, world_size=world_size, local_rank=rank, local_world_size=world_size)
        self.events: list[str] = []

    @plait.hookimpl
    def plait_process_environment(self, config):
        return self.environment

    @plait.hookimpl
    def plait_collectives(self, environment, device):
        return RecordingCollectives(environment, device, self.events)


def pretend(rank: int, world_size: int) -> tuple[Accelerator, Pretend]:
    """A fresh shared state whose process is ``rank`` of ``world_size`` (given by the first accelerator)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    plugin = Pretend(rank, world_size)
    return Accelerator(cpu=True, plugins=[plugin]), plugin


@pytest.fixture(autouse=True)
def fresh_state() -> Iterator[None]:
    """Every test starts without a shared state (no PartialState, no accelerator known), and leaves none."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
