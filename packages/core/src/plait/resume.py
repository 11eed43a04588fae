"""Automatic resume and preemption: ``accelerator.resume()``.

A script that survives ``kill -9`` of any worker under ``plait launch --max-restarts N``,
and a preemption (SIGTERM), needs five lines::

    project = ProjectConfiguration(project_dir=args.project_dir, automatic_checkpoint_naming=True, total_limit=2)
    accelerator = Accelerator(project_config=project)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    start = accelerator.resume()                  # the newest complete checkpoint, if there is one
    for epoch in range(start.epoch, epochs):      # and every few steps: accelerator.save_state()

``resume()`` loads the newest complete checkpoint of ``<project_dir>/checkpoints`` (a first
start, with none, just starts; a newest one that fails verification is skipped with a warning
for the one before it, and when none loads its error is raised), makes every prepared dataloader's next pass continue
after the batches the checkpoint had consumed, and arms preemption: after a SIGTERM
every process finishes its current optimizer step, the processes agree on the step at
which to stop, save a checkpoint and exit with :data:`PREEMPTED_EXIT_CODE` (143, 128 +
SIGTERM). ``plait launch`` forwards SIGTERM to its workers and, under SLURM with
``--requeue``, requeues the job; the next start resumes through ``resume()``.

The processes agree without a collective of their own on the step: at each step
boundary a one-integer ``all_reduce`` (max of "SIGTERM seen") is started asynchronously
and read at the next boundary, so the decision is the same on every process and
costs no wait. Only an armed run (``resume()`` called) pays it.
"""

from __future__ import annotations

import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.accelerator import Accelerator

#: The exit code of a worker that saved a checkpoint after a SIGTERM (128 + SIGTERM, as a shell reports it).
PREEMPTED_EXIT_CODE = 143


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: what :meth:`Accelerator.resume` loaded and the epoch to start the loop at.

    :ivar directory: the checkpoint loaded, or ``None`` on a first start.
    :ivar epoch: the epoch of the first prepared dataloader (0 on a first start): ``range(epoch, epochs)``.
    :ivar position: batches of that epoch the checkpoint had consumed (its next pass starts after them).
    """

    directory: str | None
    epoch: int = 0
    position: int = 0

    @property
    def resumed(self) -> bool:
        """Whether a checkpoint was loaded."""
        return self.directory is not None


def resume(accelerator: Accelerator) -> ResumePoint:
    """Load the newest complete automatic checkpoint if there is one, and arm preemption (see the module)."""
    project = accelerator.project_configuration
    if project.project_dir is None or not project.automatic_checkpoint_naming:
        raise ValueError(
            f"resume() needs ProjectConfiguration(project_dir=..., automatic_checkpoint_naming=True) "
            f"(got project_dir={project.project_dir!r}, automatic_checkpoint_naming="
            f"{project.automatic_checkpoint_naming!r}): it loads the newest checkpoint_<n> of "
            f"<project_dir>/checkpoints, and a preempted run saves one there"
        )
    from plait.checkpoint import directory as checkpoint_directory
    from plait.errors import CheckpointError

    found = checkpoint_directory.automatic_checkpoints(Path(project.project_dir) / "checkpoints")
    # Every process must try the same checkpoints, even if one appears while they look.
    candidates = accelerator.collectives.broadcast_object_list([[str(path) for _, path in reversed(found)]])[0]
    point, newest, refused = ResumePoint(None), None, []
    for candidate in candidates:
        try:
            accelerator.load_state(candidate)  # every process refuses alike, so all fall back alike
        except CheckpointError as error:
            refused.append(error)
            continue
        newest = candidate
        break
    if refused and newest is None:
        raise refused[0]  # no checkpoint fits: never start afresh silently over a run's checkpoints
    if refused:
        warnings.warn(f"resume() loaded {newest}, not the newer checkpoints that were refused: "
                      f"{'; '.join(str(e) for e in refused)}", stacklevel=3)
        project.iteration = int(Path(candidates[0]).name.rsplit("_", 1)[1]) + 1  # the next save goes after them, never into a refused one
    if newest is not None:
        loaders = list(accelerator.prepared.dataloaders)
        for loader in loaders:
            skip_next = getattr(loader, "skip_next", None)
            if callable(skip_next):
                skip_next(int(getattr(loader, "position", 0)))  # the next pass continues mid-epoch
        first = loaders[0] if loaders else None
        point = ResumePoint(newest, int(getattr(first, "epoch", 0)), int(getattr(first, "position", 0)))
    Preemption.arm(accelerator)
    return point


class Preemption:
    """SIGTERM seen -> every process finishes its step, they agree, save and exit with 143."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        #: Set by the signal handler; read at step boundaries.
        self.requested = False
        self._pending: Any = None
        self._flag: Any = None

    @classmethod
    def arm(cls, accelerator: Accelerator) -> Preemption | None:
        """Catch SIGTERM (main thread only) and check for it at every step boundary of prepared dataloaders."""
        existing = accelerator.gradient_state.preemption
        if existing is not None:
            return existing  # type: ignore[no-any-return]
        if threading.current_thread() is not threading.main_thread():
            warnings.warn("resume() was called outside the main thread: SIGTERM is not caught", stacklevel=3)
            return None
        preemption = cls(accelerator)
        signal.signal(signal.SIGTERM, preemption._on_signal)
        accelerator.gradient_state.preemption = preemption
        return preemption

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True

    def at_step_boundary(self) -> None:
        """Between two optimizer steps (a prepared dataloader calls it before reading the next batch)."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            if self.requested:
                self._stop()
            return
        import torch
        import torch.distributed as dist

        stop = False
        if self._pending is not None:
            self._pending.wait()
            stop = bool(self._flag.item())
            self._pending = None
        if stop:
            self._stop()
        self._flag = torch.tensor([int(self.requested)], device=accelerator.device)
        self._pending = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, async_op=True)

    def _stop(self) -> None:
        accelerator = self.accelerator
        directory = accelerator.save_state()
        accelerator.print(
            f"plait: stopped by SIGTERM after the step in progress; saved {directory}; exiting with "
            f"{PREEMPTED_EXIT_CODE} (accelerator.resume() continues from it)"
        )
        accelerator.end_training()
        raise SystemExit(PREEMPTED_EXIT_CODE)
