"""HF Accelerate's collective operations on nested structures, over six primitives; one process."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from plait import nested

if TYPE_CHECKING:
    from plait.process.environment import ProcessEnvironment
    from plait.training.gradient_state import GradientState

REDUCTIONS = ("sum", "mean", "max", "none")


class Collectives:
    """Every collective of a run. This class runs one process: each primitive returns its input.

    A subclass for several processes overrides the six primitives (:meth:`all_gather`,
    :meth:`all_reduce`, :meth:`broadcast_tensor`, :meth:`gather_objects`,
    :meth:`broadcast_objects`, :meth:`barrier`); the structured methods (HF Accelerate's
    ``gather``, ``reduce``, ``broadcast``, ``pad_across_processes``...) are built on them.

    :param environment: this process's place in the job.
    :param device: this process's device (where collectives put the tensors they make).
    :param debug: before each collective (and each backward), compare across processes what they are
        about to do and the shapes of their tensors, so that a mismatch is an error on every process
        instead of a hang (``PLAIT_DEBUG=1``).

    When a wait for the other processes times out, the error names the processes that did not
    arrive and what the others were waiting in (:class:`~plait.errors.CollectiveTimeoutError`).
    """

    #: How many collectives this object ran (the ``#7`` of its reports).
    calls: int = 0
    #: How many backward calls :meth:`check_operation` saw (with ``debug`` only).
    backward_calls: int = 0
    #: Where this process's dataloaders stand, in words, for the reports (the preparer sets it).
    progress: Callable[[], str] | None = None
    #: True inside ``join_uneven_inputs``: processes then call backward different numbers of times on purpose.
    uneven_inputs: bool = False

    def __init__(self, environment: ProcessEnvironment, device: torch.device, debug: bool = False) -> None:
        self.environment = environment
        self.device = device
        self.debug = debug

    @property
    def num_processes(self) -> int:
        return self.environment.world_size

    # ------------------------------------------------------------------ primitives
    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` (the same shape on every process) from every process along dimension 0,
        in rank order; a 0-d tensor is gathered as one element per process."""
        return tensor

    def all_reduce(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """Reduce ``tensor`` over every process (``"sum"``, ``"mean"`` or ``"max"``); may work in place."""
        return tensor

    def broadcast_tensor(self, tensor: torch.Tensor, from_process: int) -> torch.Tensor:
        """Process ``from_process``'s ``tensor`` (same shape and dtype everywhere) on every process."""
        return tensor

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every process's picklable ``obj``, in rank order, on every process."""
        return [obj]

    def broadcast_objects(self, objects: list[Any], from_process: int) -> list[Any]:
        """Replace the items of ``objects`` in place by process ``from_process``'s; return the list."""
        return objects

    def barrier(self) -> None:
        """Block until every process has reached this point."""

    # ------------------------------------------------------------------ hangs named
    def check_operation(self, operation: str) -> None:
        """With ``debug``, before ``operation`` (``"backward"``: its gradient synchronisation) compare what
        every process is about to do, and raise :class:`~plait.errors.CollectiveMismatchError` on every
        process when they differ. One process: nothing to compare."""

    def raise_if_timed_out(self, error: BaseException, operation: str) -> None:
        """Raise :class:`~plait.errors.CollectiveTimeoutError` (from ``error``) when ``error`` is a timeout of
        ``operation``'s wait for the other processes; otherwise return, and the caller re-raises ``error``.
        One process: nothing to wait for."""

    # ------------------------------------------------------------------ HF Accelerate's operations
    def gather(self, tensor: Any) -> Any:
        """Concatenate tensors from every process along dimension 0 (works on nested lists/tuples/dicts)."""
        return nested.apply(self.all_gather, tensor, strict=True)

    def gather_object(self, obj: Any) -> Any:
        """Collect a picklable object (a list's items are concatenated) from every process.

        With one process ``obj`` is returned as it is (HF Accelerate's behaviour).
        """
        if self.num_processes == 1:
            return obj
        gathered = self.gather_objects(obj)
        if isinstance(obj, (list, tuple)):
            return [item for part in gathered for item in part]
        return gathered

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool, gradient_state: GradientState) -> Any:
        """Gather for metric computation: the samples padding added on the last batch are dropped."""
        use_gather_object = use_gather_object or not nested.is_tensor_structure(input_data)
        data = self.gather_object(input_data) if use_gather_object else self.gather(input_data)
        if gradient_state.end_of_dataloader and gradient_state.remainder > 0:
            if use_gather_object:
                return data[: gradient_state.remainder]
            return nested.slice_tensors(data, slice(0, gradient_state.remainder))
        return data

    def reduce(self, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
        """Reduce tensors over every process (``"sum"``, ``"mean"`` or ``"max"``), then multiply by ``scale``.

        ``"none"`` (HF Accelerate's documented no-op) returns a copy of each tensor, unreduced and unscaled.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not valid: expected one of {', '.join(map(repr, REDUCTIONS))}")

        def _reduce(t: torch.Tensor) -> torch.Tensor:
            if reduction == "none":
                return t.clone()
            out = self.all_reduce(t.clone(), reduction)
            return out * scale if scale != 1.0 else out

        return nested.apply(_reduce, tensor, strict=True)

    def broadcast(self, tensor: Any, from_process: int = 0) -> Any:
        """Every process gets process ``from_process``'s tensors."""
        return nested.apply(lambda t: self.broadcast_tensor(t, from_process), tensor, strict=True)

    def broadcast_object_list(self, object_list: list[Any], from_process: int = 0) -> list[Any]:
        """Fill ``object_list`` in place with process ``from_process``'s objects."""
        return self.broadcast_objects(object_list, from_process)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
        """Pad tensors along ``dim`` to the largest size across processes, so that they can be gathered."""

        def _pad(t: torch.Tensor) -> torch.Tensor:
            if dim >= t.dim() or dim < -t.dim():
                return t
            d = dim % t.dim()
            sizes = self.all_gather(torch.tensor(t.shape, device=t.device)[None]).cpu()
            largest = int(sizes[:, d].max())
            if largest == t.shape[d]:
                return t
            shape = list(t.shape)
            shape[d] = largest
            out = t.new_full(shape, pad_index)
            start = largest - t.shape[d] if pad_first else 0
            index = tuple(slice(start, start + t.shape[d]) if i == d else slice(None) for i in range(t.dim()))
            out[index] = t
            return out

        return nested.apply(_pad, tensor, strict=True)
