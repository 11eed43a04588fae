"""Training: what ``prepare`` returns and records (:mod:`~plait.training.preparer`,
:mod:`~plait.training.registry`), the prepared optimizer and scheduler, gradient accumulation and its
sync-control capability (:mod:`~plait.training.accumulation`), and the state they share
(:mod:`~plait.training.gradient_state`)."""

from __future__ import annotations

from plait.training.accumulation import Accumulate, Accumulation, GradientSyncControl
from plait.training.forward_patch import patch_forward, unpatch_forward
from plait.training.gradient_state import GradientState
from plait.training.optimizer import AcceleratedOptimizer
from plait.training.preparer import Preparer
from plait.training.registry import PreparedObjects, PreparedRegistry
from plait.training.scheduler import AcceleratedScheduler

__all__ = [
    "AcceleratedOptimizer",
    "AcceleratedScheduler",
    "Accumulate",
    "Accumulation",
    "GradientState",
    "GradientSyncControl",
    "PreparedObjects",
    "PreparedRegistry",
    "Preparer",
    "patch_forward",
    "unpatch_forward",
]
