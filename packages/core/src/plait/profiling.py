"""``accelerator.profile()``: torch.profiler over a block, one Chrome trace per process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plait.accelerator import Accelerator
    from plait.utils.dataclasses import ProfileKwargs


@contextlib.contextmanager
def profile(accelerator: Accelerator, handler: ProfileKwargs | None) -> Iterator[Any]:
    """Profile the block with ``handler``'s options (defaults without one), yielding the profiler (call
    its ``step()`` with a schedule). With ``output_trace_dir``, process *i* writes
    ``<output_trace_dir>/profile_<i>.json`` (HF Accelerate's name) when the block ends."""
    from plait.utils.dataclasses import ProfileKwargs

    handler = handler if handler is not None else ProfileKwargs()
    profiler = handler.build()
    with profiler:
        yield profiler
    if handler.output_trace_dir is None:
        return
    os.makedirs(handler.output_trace_dir, exist_ok=True)
    profiler.export_chrome_trace(os.path.join(handler.output_trace_dir, f"profile_{accelerator.process_index}.json"))
    accelerator.wait_for_everyone()
