"""The collective-communication methods of ``Accelerator``, over the sync hooks, on nested structures."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from plait import operations

if TYPE_CHECKING:
    from plait.environment import ProcessEnvironment
    from plait.state import GradientState

_REDUCTIONS = ("sum", "mean", "max", "none")


class CollectivesMixin:
    """Gathering, reducing, broadcasting and process coordination (HF Accelerate's names)."""

    _pm: Any
    environment: ProcessEnvironment
    gradient_state: GradientState
    num_processes: int
    process_index: int
    is_main_process: bool
    is_local_main_process: bool

    def gather(self, tensor: Any) -> Any:
        """Concatenate tensors from every process along dimension 0 (works on nested lists/tuples/dicts)."""
        hook = self._pm.hook.plait_all_gather
        return operations.apply(lambda t: hook(accelerator=self, tensor=t), tensor, strict=True)

    def gather_object(self, obj: Any) -> Any:
        """Collect a picklable object (a list's items are concatenated) from every process.

        With one process ``obj`` is returned as it is (HF Accelerate's behaviour).
        """
        if self.num_processes == 1:
            return obj
        gathered = self._pm.hook.plait_gather_object(accelerator=self, obj=obj)
        if isinstance(obj, (list, tuple)):
            return [item for part in gathered for item in part]
        return gathered

    def gather_for_metrics(self, input_data: Any, use_gather_object: bool = False) -> Any:
        """Gather for metric computation: the samples padding added on the last batch are dropped."""
        use_gather_object = use_gather_object or not operations.is_tensor_structure(input_data)
        data = self.gather_object(input_data) if use_gather_object else self.gather(input_data)
        state = self.gradient_state
        if state.end_of_dataloader and state.remainder > 0:
            if use_gather_object:
                return data[: state.remainder]
            return operations.slice_tensors(data, slice(0, state.remainder))
        return data

    def reduce(self, tensor: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
        """Reduce tensors over every process (``"sum"``, ``"mean"`` or ``"max"``), then multiply by ``scale``.

        ``"none"`` (HF Accelerate's documented no-op) returns a copy of each tensor, unreduced and unscaled.
        """
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not valid: expected one of {', '.join(_REDUCTIONS)}")
        hook = self._pm.hook.plait_all_reduce

        def _reduce(t: torch.Tensor) -> torch.Tensor:
            if reduction == "none":
                return t.clone()
            out = hook(accelerator=self, tensor=t.clone(), op=reduction)
            return out * scale if scale != 1.0 else out

        return operations.apply(_reduce, tensor, strict=True)

    def broadcast(self, tensor: Any, from_process: int = 0) -> Any:
        """Every process gets process ``from_process``'s tensors."""
        hook = self._pm.hook.plait_broadcast
        return operations.apply(lambda t: hook(accelerator=self, tensor=t, from_process=from_process), tensor, strict=True)

    def broadcast_object_list(self, object_list: list[Any], from_process: int = 0) -> list[Any]:
        """Fill ``object_list`` in place with process ``from_process``'s objects."""
        return self._pm.hook.plait_broadcast_object_list(accelerator=self, objects=object_list, from_process=from_process)

    def pad_across_processes(self, tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
        """Pad tensors along ``dim`` to the largest size across processes, so that they can be gathered."""

        def _pad(t: torch.Tensor) -> torch.Tensor:
            if dim >= t.dim() or dim < -t.dim():
                return t
            d = dim % t.dim()
            sizes = self.gather(torch.tensor(t.shape, device=t.device)[None]).cpu()
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

        return operations.apply(_pad, tensor, strict=True)

    def wait_for_everyone(self) -> None:
        """Block until every process reaches this point."""
        self._pm.hook.plait_barrier(accelerator=self)

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Run the block on the main process first, then on the others (e.g. to download or cache once)."""
        if not self.is_main_process:
            self.wait_for_everyone()
        yield
        if self.is_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def local_main_process_first(self) -> Iterator[None]:
        """Run the block on each machine's local main process first, then on the others."""
        if not self.is_local_main_process:
            self.wait_for_everyone()
        yield
        if self.is_local_main_process:
            self.wait_for_everyone()

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """Yield this process's contiguous share of ``inputs`` (a list, tuple, dict of lists, or tensor).

        With ``apply_padding`` every share has the same length, padded with the last item of ``inputs``.
        """
        yield split_for_process(inputs, self.process_index, self.num_processes, apply_padding)


def split_for_process(inputs: Any, index: int, count: int, apply_padding: bool = False) -> Any:
    """Process ``index`` of ``count``'s contiguous share of ``inputs`` (earlier processes get the extras)."""
    if count == 1:
        return inputs
    if isinstance(inputs, Mapping):
        lengths = {k: len(v) for k, v in inputs.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"split_between_processes needs values of one length, got lengths {lengths}")
        return operations.rebuild_mapping(inputs, {k: split_for_process(v, index, count, apply_padding) for k, v in inputs.items()})
    length = len(inputs)
    per_process, extras = divmod(length, count)
    start = index * per_process + min(index, extras)
    end = start + per_process + (1 if index < extras else 0)
    share = inputs[start:end]
    if apply_padding:
        target = math.ceil(length / count)
        missing = target - (end - start)
        if missing > 0:
            last = inputs[-1:]  # HF Accelerate pads with the input's last element, not the share's
            share = torch.cat([share] + [last] * missing) if isinstance(share, torch.Tensor) else share + last * missing
    return share
