"""What an accelerator prepared: the registry its checkpointer and plugins read, and joint wrapping's answer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

KINDS = ("model", "optimizer", "scheduler", "dataloader")


class PreparedRegistry:
    """The prepared models, optimizers, schedulers and dataloaders, in the order they were prepared.

    Plugins read it (``accelerator.prepared.models``) instead of any private list; each view is a
    tuple, so reading it cannot change it. Core's preparation adds to it, ``free_memory`` empties it.
    """

    def __init__(self) -> None:
        self._objects: dict[str, list[Any]] = {kind: [] for kind in KINDS}

    @property
    def models(self) -> tuple[Any, ...]:
        return tuple(self._objects["model"])

    @property
    def optimizers(self) -> tuple[Any, ...]:
        return tuple(self._objects["optimizer"])

    @property
    def schedulers(self) -> tuple[Any, ...]:
        return tuple(self._objects["scheduler"])

    @property
    def dataloaders(self) -> tuple[Any, ...]:
        return tuple(self._objects["dataloader"])

    def describe_dataloaders(self) -> str:
        """Where each prepared dataloader stands (``"dataloader 0: 5 batches yielded in epoch 0"``): what the
        collectives' timeout and debug reports say of this process."""
        loaders = [d for d in self._objects["dataloader"] if hasattr(d, "describe_position")]
        return "; ".join(f"dataloader {i}: {d.describe_position()}" for i, d in enumerate(loaders))

    @property
    def optimizer_step_was_skipped(self) -> bool:
        """Whether the last step of a prepared optimizer was skipped (fp16 found inf or nan gradients)."""
        return any(getattr(opt, "step_was_skipped", False) for opt in self.optimizers)

    def __contains__(self, obj: object) -> bool:
        """Whether ``obj`` itself (not an equal object) is one of the prepared ones."""
        return any(obj is seen for objects in self._objects.values() for seen in objects)

    def add(self, obj: Any, kind: str) -> None:
        """Record ``obj`` as a prepared ``kind`` (``"model"``, ``"optimizer"``, ...), once."""
        objects = self._objects[kind]
        if not any(obj is seen for seen in objects):
            objects.append(obj)

    def clear(self) -> None:
        """Forget every prepared object (``free_memory``)."""
        for objects in self._objects.values():
            objects.clear()


class PreparedObjects:
    """Replacements chosen by ``plait_prepare_jointly``: each original object (by identity) to its prepared one."""

    def __init__(self, pairs: Iterable[tuple[Any, Any]]) -> None:
        self._by_id = {id(original): (original, prepared) for original, prepared in pairs}

    def __contains__(self, original: Any) -> bool:
        return id(original) in self._by_id

    def get(self, original: Any) -> Any:
        """The prepared replacement of ``original``."""
        return self._by_id[id(original)][1]
