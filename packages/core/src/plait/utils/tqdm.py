"""HF Accelerate's ``accelerate.utils.tqdm``: a progress bar shown by one process per machine."""

from __future__ import annotations

from typing import Any


def tqdm(*args: Any, main_process_only: bool = True, **kwargs: Any) -> Any:
    """``tqdm.auto.tqdm(*args, **kwargs)``, disabled on every process but the local main process (local
    rank 0) unless ``main_process_only=False``. A ``disable=True`` passed in is kept.

    tqdm is not a dependency of plait: without it this raises an ``ImportError`` saying how to install it.
    """
    from plait.utils.imports import is_tqdm_available

    if not is_tqdm_available():
        raise ImportError("plait.utils.tqdm needs the tqdm library, which is not installed: run `pip install tqdm`")
    if args and isinstance(args[0], bool):
        raise ValueError(
            f"tqdm({args[0]!r}, ...): passing main_process_only as the first argument is not supported (as in HF "
            f"Accelerate); pass it by name: tqdm(iterable, main_process_only={args[0]!r})"
        )
    from tqdm.auto import tqdm as auto_tqdm

    disable = kwargs.pop("disable", False)
    if main_process_only and not disable:
        from plait.state import PartialState

        disable = PartialState().local_process_index != 0
    return auto_tqdm(*args, disable=disable, **kwargs)
