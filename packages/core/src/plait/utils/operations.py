"""HF Accelerate's ``accelerate.utils.operations``: collectives and helpers on nested lists, tuples and dicts
of tensors, as free functions.

The collectives (``gather``, ``reduce``, ``broadcast``...) run on the collectives of the process's
:class:`~plait.PartialState` (the first accelerator's, or those ``PartialState()`` started), so every
process must call them, as with HF Accelerate. The structure helpers are those of :mod:`plait.nested`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from plait import nested
from plait.random import check_rng_types, set_seed

if TYPE_CHECKING:
    from plait.collectives import Collectives

__all__ = [
    "TensorInformation", "broadcast", "broadcast_object_list", "concatenate", "convert_outputs_to_fp32",
    "convert_to_fp32", "find_batch_size", "find_device", "gather", "gather_object", "honor_type",
    "initialize_tensors", "is_namedtuple", "is_tensor_information", "is_torch_tensor", "listify",
    "pad_across_processes", "recursively_apply", "reduce", "send_to_device", "set_seed", "slice_tensors",
    "synchronize_rng_state", "synchronize_rng_states", "wait_for_everyone",
]

convert_to_fp32 = nested.convert_to_fp32


@dataclass(frozen=True)
class TensorInformation:
    """A tensor's shape and dtype, to make an empty one of the same kind (:func:`initialize_tensors`)."""

    shape: torch.Size
    dtype: torch.dtype


def _collectives() -> Collectives:
    from plait.state import PartialState

    return PartialState().collectives


# --------------------------------------------------------------------------- structure
def is_torch_tensor(tensor: Any) -> bool:
    return isinstance(tensor, torch.Tensor)


def is_tensor_information(tensor_info: Any) -> bool:
    return isinstance(tensor_info, TensorInformation)


def is_namedtuple(data: Any) -> bool:
    """Whether ``data`` is a ``namedtuple`` (or something built exactly like one)."""
    return isinstance(data, tuple) and hasattr(data, "_asdict") and hasattr(data, "_fields")


def honor_type(obj: Any, generator: Any) -> Any:
    """The items of ``generator`` in a container of ``obj``'s type (list, tuple or namedtuple)."""
    if is_namedtuple(obj):
        return type(obj)(*list(generator))
    return type(obj)(generator)


def recursively_apply(
    func: Callable[..., Any],
    data: Any,
    *args: Any,
    test_type: Callable[[Any], bool] = is_torch_tensor,
    error_on_other_type: bool = False,
    **kwargs: Any,
) -> Any:
    """Apply ``func(leaf, *args, **kwargs)`` to every leaf of ``data`` for which ``test_type`` is true,
    keeping the lists, tuples and dicts around them; other leaves are kept (or, with
    ``error_on_other_type``, a ``TypeError``)."""
    if isinstance(data, (tuple, list)):
        return honor_type(
            data,
            (recursively_apply(func, d, *args, test_type=test_type, error_on_other_type=error_on_other_type, **kwargs)
             for d in data),
        )
    if isinstance(data, Mapping):
        return nested.rebuild_mapping(data, {
            k: recursively_apply(func, v, *args, test_type=test_type, error_on_other_type=error_on_other_type, **kwargs)
            for k, v in data.items()
        })
    if test_type(data):
        return func(data, *args, **kwargs)
    if error_on_other_type:
        raise TypeError(
            f"unsupported type {type(data).__name__} passed to {getattr(func, '__name__', func)!s}: expected "
            f"nested lists, tuples and dicts of objects for which {getattr(test_type, '__name__', test_type)!s} is true"
        )
    return data


def send_to_device(tensor: Any, device: Any, non_blocking: bool = False, skip_keys: str | list[str] | None = None) -> Any:
    """Move every tensor in ``tensor`` (nested lists, tuples, dicts; objects with ``.to``) to ``device``;
    the values of dicts under ``skip_keys`` stay where they are."""
    device = torch.device(device) if isinstance(device, (str, int)) else device
    if skip_keys is None or isinstance(tensor, torch.Tensor):
        return nested.send_to_device(tensor, device, non_blocking)
    skipped = [skip_keys] if isinstance(skip_keys, str) else list(skip_keys)
    if isinstance(tensor, (tuple, list)):
        return honor_type(tensor, (send_to_device(t, device, non_blocking, skipped) for t in tensor))
    if isinstance(tensor, Mapping):
        return nested.rebuild_mapping(tensor, {
            k: v if k in skipped else send_to_device(v, device, non_blocking, skipped) for k, v in tensor.items()
        })
    return nested.send_to_device(tensor, device, non_blocking)


def initialize_tensors(data_structure: Any) -> Any:
    """Empty tensors in place of every :class:`TensorInformation` of ``data_structure``."""
    return recursively_apply(
        lambda info: torch.empty(*info.shape, dtype=info.dtype), data_structure, test_type=is_tensor_information
    )


def find_batch_size(data: Any) -> int:
    """The first dimension of the first tensor in ``data`` (nested lists, tuples, dicts)."""
    if isinstance(data, (tuple, list, Mapping)) and len(data) == 0:
        raise ValueError(f"cannot find the batch size of an empty {type(data).__name__}: expected tensors in it")
    if isinstance(data, (tuple, list)):
        return find_batch_size(data[0])
    if isinstance(data, Mapping):
        return find_batch_size(next(iter(data.values())))
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"can only find the batch size of tensors, got a {type(data).__name__}")
    return int(data.shape[0])


def find_device(data: Any) -> torch.device | None:
    """The device of the first tensor in ``data`` (nested lists, tuples, dicts), ``None`` without one."""
    if isinstance(data, torch.Tensor):
        return data.device
    items = data.values() if isinstance(data, Mapping) else data if isinstance(data, (tuple, list)) else ()
    for item in items:
        device = find_device(item)
        if device is not None:
            return device
    return None


def listify(data: Any) -> Any:
    """Every tensor in ``data`` as (nested) Python numbers; bf16 through float32, which numpy lacks."""

    def _to_list(t: torch.Tensor) -> Any:
        t = t.detach().cpu()
        return (t.float() if t.dtype == torch.bfloat16 else t).tolist()

    return recursively_apply(_to_list, data)


def slice_tensors(data: Any, tensor_slice: Any, process_index: int | None = None, num_processes: int | None = None) -> Any:
    """``tensor[tensor_slice]`` for every tensor in ``data``."""
    return nested.slice_tensors(data, tensor_slice)


def concatenate(data: Any, dim: int = 0) -> Any:
    """Concatenate a list of structures with tensors of the same shapes into one structure, along ``dim``."""
    if not isinstance(data, (tuple, list)) or len(data) == 0:
        raise TypeError(f"concatenate needs a non-empty list of batches, got {type(data).__name__} {data!r:.80}")
    first = data[0]
    if isinstance(first, (tuple, list)):
        return honor_type(first, (concatenate([d[i] for d in data], dim=dim) for i in range(len(first))))
    if isinstance(first, Mapping):
        return nested.rebuild_mapping(first, {k: concatenate([d[k] for d in data], dim=dim) for k in first})
    if isinstance(first, torch.Tensor):
        return torch.cat(list(data), dim=dim)
    if len(data) == 1:
        return first
    raise TypeError(f"can only concatenate tensors, got a {type(first).__name__}")


def convert_outputs_to_fp32(model_forward: Callable[..., Any]) -> Callable[..., Any]:
    """``model_forward`` whose fp16/bf16 tensor outputs are cast to fp32 (``__wrapped__`` is the original)."""

    @functools.wraps(model_forward)
    def forward(*args: Any, **kwargs: Any) -> Any:
        return convert_to_fp32(model_forward(*args, **kwargs))

    return forward


# --------------------------------------------------------------------------- collectives
def gather(tensor: Any) -> Any:
    """Concatenate the tensors of every process along dimension 0 (nested lists, tuples, dicts)."""
    return _collectives().gather(tensor)


def gather_object(object: Any) -> Any:
    """Every process's picklable ``object`` (a list's items concatenated), on every process."""
    return _collectives().gather_object(object)


def broadcast(tensor: Any, from_process: int = 0) -> Any:
    """Process ``from_process``'s tensors, in place, on every process."""
    return _collectives().broadcast(tensor, from_process)


def broadcast_object_list(object_list: list[Any], from_process: int = 0) -> list[Any]:
    """Fill ``object_list`` in place with process ``from_process``'s picklable objects."""
    return _collectives().broadcast_object_list(object_list, from_process)


def reduce(tensor: Any, reduction: str = "mean", scale: float = 1.0) -> Any:
    """The tensors reduced over every process (``"mean"``, ``"sum"``, ``"max"``; ``"none"``: a copy), times ``scale``."""
    return _collectives().reduce(tensor, reduction, scale)


def pad_across_processes(tensor: Any, dim: int = 0, pad_index: int = 0, pad_first: bool = False) -> Any:
    """Pad the tensors along ``dim`` to the largest size among the processes (so that they can be gathered)."""
    return _collectives().pad_across_processes(tensor, dim, pad_index, pad_first)


def wait_for_everyone() -> None:
    """Block until every process reaches this point."""
    from plait.state import PartialState

    PartialState().wait_for_everyone()


# --------------------------------------------------------------------------- random number generators
_GETTERS: dict[str, Callable[[torch.Generator | None], torch.Tensor]] = {
    "torch": lambda _: torch.get_rng_state(),
    "cuda": lambda _: torch.cuda.get_rng_state(),
    "mps": lambda _: torch.mps.get_rng_state(),
    "generator": lambda generator: generator.get_state() if generator is not None else torch.empty(0),
}


def _set(rng_type: str, state: torch.Tensor, generator: torch.Generator | None) -> None:
    if rng_type == "torch":
        torch.set_rng_state(state)
    elif rng_type == "cuda":
        torch.cuda.set_rng_state(state)
    elif rng_type == "mps":
        torch.mps.set_rng_state(state)
    elif generator is not None:
        generator.set_state(state)


def synchronize_rng_state(rng_type: Any = None, generator: torch.Generator | None = None) -> None:
    """Give every process the main process's state of the generator ``rng_type`` (``"torch"``, ``"cuda"``,
    ``"mps"``, or ``"generator"``: ``generator``'s)."""
    [kind] = check_rng_types(["torch" if rng_type is None else rng_type])
    if kind == "xla":
        from plait.errors import not_supported

        raise not_supported("synchronize_rng_state('xla')", "torch_xla's own seeding (xm.set_rng_state) on each process")
    if kind == "generator" and generator is None:
        raise ValueError("synchronize_rng_state('generator') needs the generator to synchronise: pass generator=")
    if kind in ("cuda", "mps") and not getattr(torch, kind).is_available():
        raise ValueError(f"synchronize_rng_state({kind!r}): this machine has no {kind.upper()} device; leave it out")
    collectives = _collectives()
    state = _GETTERS[kind](generator)
    if collectives.num_processes > 1:
        state = collectives.broadcast(state.to(collectives.device), 0).cpu()
    _set(kind, state, generator)


def synchronize_rng_states(rng_types: Any, generator: torch.Generator | None = None) -> None:
    """:func:`synchronize_rng_state` for each of ``rng_types``."""
    for rng_type in check_rng_types(rng_types):
        synchronize_rng_state(rng_type, generator=generator)
