"""Values of registered objects' states stored so that ``torch.load(weights_only=True)`` reads them back exactly.

``weights_only`` unpickling reads tensors, numbers, strings, bytes, ``None``, ``torch.Size``/``dtype``/
``device`` and dicts, lists, tuples and sets of them, and refuses everything else, because anything
else is code to run. States commonly hold two more kinds of plain data: numpy arrays and scalars
(``np.random.get_state()`` is a tuple holding an array) and ``datetime`` values; and empty ``bytes`` fail
to load. :func:`encode` stores those as tagged dicts of plain values (dtype, shape and the raw bytes as a
``uint8`` tensor; the fields of a date), which
:func:`decode` turns back into the same objects, and refuses, when saving, anything that would fail
to load (a dataclass, a namedtuple, an enum, an object), naming the key path and the type. It is one
walk over the containers; tensors are not looked into.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, OrderedDict
from typing import Any

import torch

from plait.errors import CheckpointError

#: The key of a tagged dict; a state's own dict may not use it.
TAG = "__plait_value__"

# Values weights_only reads as they are (exact types: a subclass of int, an enum say, is refused there).
_LEAVES = frozenset({type(None), bool, int, float, complex, str, torch.Tensor, torch.nn.Parameter, torch.Size,
                     torch.dtype, torch.device})
# Read back too, but not when empty (pickled as a call of ``bytes``, which weights_only refuses): stored as tensors.
_BYTES = (bytes, bytearray)
_MAPPINGS = (dict, OrderedDict, Counter)
_DATES = {dt.datetime: "datetime.datetime", dt.date: "datetime.date", dt.time: "datetime.time",
          dt.timedelta: "datetime.timedelta"}


class UnsafeValue(Exception):
    """A value :func:`encode` cannot store; ``path`` is its key path (each container adds its key on the way out)."""

    def __init__(self, value: Any, why: str = "") -> None:
        super().__init__(type(value).__qualname__)
        self.path = ""
        self.value = value
        self.why = why


def encode_state(state: Any, owner: str) -> Any:
    """:func:`encode` of ``owner``'s state (``"registered object 1 (Counter)"``), with a
    :class:`~plait.errors.CheckpointError` saying what to do when a value cannot be stored."""
    try:
        return encode(state)
    except UnsafeValue as bad:
        kind = type(bad.value)
        raise CheckpointError(
            f"{owner}'s state_dict() holds a {kind.__module__}.{kind.__qualname__} at state{bad.path}{bad.why}, "
            f"which torch.load(weights_only=True) would refuse to load: nothing was saved. Return plain containers "
            f"(dict, list, tuple), tensors, numbers, strings, numpy arrays or datetime values from state_dict() "
            f"(for a dataclass, dataclasses.asdict(...); for an object, its fields)"
        ) from None


def encode(value: Any) -> Any:
    """``value`` with numpy arrays and scalars, datetime values and bytes replaced by tagged dicts of plain values;
    a container in which nothing changed is returned as it is (an ``OrderedDict`` keeps its ``_metadata``).

    :raises UnsafeValue: for a value ``weights_only`` loading would refuse.
    """
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind in _MAPPINGS:
        if TAG in value:
            raise UnsafeValue(value, f" (its key {TAG!r} is reserved for plait's tags)")
        changed = False
        items = []
        for key, item in value.items():
            try:
                new = encode(item) if type(item) not in _LEAVES else item
                if type(key) not in _LEAVES:
                    _key(key)
            except UnsafeValue as bad:
                bad.path = f"[{key!r}]{bad.path}"
                raise
            changed = changed or new is not item
            items.append((key, new))
        return _rebuilt(value, items) if changed else value
    if kind is list or kind is tuple:
        new_items = []
        for i, item in enumerate(value):
            try:
                new_items.append(encode(item) if type(item) not in _LEAVES else item)
            except UnsafeValue as bad:
                bad.path = f"[{i}]{bad.path}"
                raise
        if all(a is b for a, b in zip(new_items, value)):
            return value
        return new_items if kind is list else tuple(new_items)
    if kind is set:
        for item in value:
            _key(item)
        return value
    if kind in _BYTES:
        return {TAG: kind.__name__, "data": _byte_tensor(value)}
    if kind in _DATES:
        return _encode_date(value)
    if kind.__module__ == "numpy":
        return _encode_numpy(value)
    raise UnsafeValue(value)


def _rebuilt(value: Any, items: list[tuple[Any, Any]]) -> Any:
    """A mapping of ``value``'s kind holding ``items``, with its attributes (an OrderedDict's ``_metadata``)."""
    kind = type(value)
    copy = kind(items) if kind is not Counter else Counter(dict(items))
    if kind is not dict:  # an OrderedDict's attributes (a module state dict's _metadata)
        copy.__dict__.update(vars(value))
    return copy


def _key(key: Any) -> None:
    """Check a dict key or set item: a leaf, or a tuple of them (nothing to tag: a tagged dict is not hashable)."""
    kind = type(key)
    if not (kind in _LEAVES or (kind is tuple and all(type(k) in _LEAVES for k in key))):
        raise UnsafeValue(key, f" as a dict key or set item ({key!r})")


def _encode_date(value: Any) -> dict[str, Any]:
    if isinstance(value, dt.timedelta):
        return {TAG: "datetime.timedelta", "fields": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, dt.datetime | dt.time):
        if value.tzinfo is not None and type(value.tzinfo) is not dt.timezone:
            raise UnsafeValue(value.tzinfo, " as the time zone of a datetime (only fixed offsets are stored)")
        offset = None
        if value.tzinfo is not None:
            delta = value.utcoffset()
            assert delta is not None
            offset = [delta.days, delta.seconds, delta.microseconds, value.tzinfo.tzname(None)]
        if isinstance(value, dt.datetime):
            fields = [value.year, value.month, value.day, value.hour, value.minute, value.second,
                      value.microsecond, value.fold]
            return {TAG: "datetime.datetime", "fields": fields, "offset": offset}
        return {TAG: "datetime.time", "fields": [value.hour, value.minute, value.second, value.microsecond,
                                                 value.fold], "offset": offset}
    return {TAG: "datetime.date", "fields": [value.year, value.month, value.day]}


def _encode_numpy(value: Any) -> dict[str, Any]:
    import numpy as np

    if type(value) is np.ndarray or isinstance(value, np.generic):  # not a subclass (np.matrix) of an array
        dtype = value.dtype
        if dtype.kind in "OV":  # objects and structured records: no plain bytes to store
            raise UnsafeValue(value, f" of dtype {dtype}")
        if isinstance(value, np.ndarray):
            return {TAG: "numpy.ndarray", "dtype": dtype.str, "shape": list(value.shape),
                    "data": _byte_tensor(value.tobytes())}
        return {TAG: "numpy.generic", "dtype": dtype.str, "data": _byte_tensor(value.tobytes())}
    raise UnsafeValue(value)


def _byte_tensor(data: bytes | bytearray) -> torch.Tensor:
    """Raw bytes as a ``uint8`` tensor (a copy: tensors load back without pickle, even empty)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)


def decode(value: Any) -> Any:
    """Undo :func:`encode` (a container without tags comes back as it is)."""
    kind = type(value)
    if kind in _MAPPINGS:
        tag = value.get(TAG) if kind is dict else None
        if tag is not None:
            return _decode_tagged(tag, value)
        items = [(key, decode(item) if type(item) not in _LEAVES else item) for key, item in value.items()]
        if all(new is old for (_, new), old in zip(items, value.values())):
            return value
        return _rebuilt(value, items)
    if kind is list or kind is tuple:
        new_items = [decode(item) if type(item) not in _LEAVES else item for item in value]
        if all(a is b for a, b in zip(new_items, value)):
            return value
        return new_items if kind is list else tuple(new_items)
    return value


def _decode_tagged(tag: str, value: dict[str, Any]) -> Any:
    try:
        if tag in ("bytes", "bytearray"):
            data = value["data"].numpy().tobytes()
            return data if tag == "bytes" else bytearray(data)
        if tag in ("numpy.ndarray", "numpy.generic"):
            import numpy as np

            array = np.frombuffer(value["data"].numpy().tobytes(), dtype=np.dtype(value["dtype"]))
            return array.reshape(value["shape"]).copy() if tag == "numpy.ndarray" else array[0]
        fields = value["fields"]
        if tag == "datetime.timedelta":
            return dt.timedelta(days=fields[0], seconds=fields[1], microseconds=fields[2])
        if tag == "datetime.date":
            return dt.date(*fields)
        offset = value["offset"]
        zone = None if offset is None else dt.timezone(dt.timedelta(*offset[:3]), offset[3])
        if tag == "datetime.datetime":
            year, month, day, hour, minute, second, microsecond, fold = fields
            return dt.datetime(year, month, day, hour, minute, second, microsecond, tzinfo=zone, fold=fold)
        if tag == "datetime.time":
            hour, minute, second, microsecond, fold = fields
            return dt.time(hour, minute, second, microsecond, tzinfo=zone, fold=fold)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"a stored {tag} value is malformed ({type(exc).__name__}: {exc}); nothing was loaded") from None
    raise CheckpointError(f"a stored value has the unknown tag {tag!r}: it was written by a newer plait; nothing was loaded")
