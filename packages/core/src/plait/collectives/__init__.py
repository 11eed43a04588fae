"""Collectives: one object per Accelerator runs every gather, reduction, broadcast and barrier.

:class:`Collectives` implements HF Accelerate's structured operations (nested lists,
tuples and dicts of tensors, padding, metrics) over six primitives, and runs one
process; :class:`TorchCollectives` implements the primitives with
``torch.distributed``. The ``plait_collectives`` hook hands the object over once; a
backend with collectives of its own returns a subclass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plait.collectives.splitting import split_for_process
from plait.collectives.structured import REDUCTIONS, Collectives
from plait.lazy_names import lazy_names

if TYPE_CHECKING:
    from plait.collectives.torch_distributed import TorchCollectives

__all__ = ["REDUCTIONS", "Collectives", "TorchCollectives", "split_for_process"]

__getattr__, __dir__ = lazy_names(globals(), {"TorchCollectives": "plait.collectives.torch_distributed"})
