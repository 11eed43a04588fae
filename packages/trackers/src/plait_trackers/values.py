"""What a logged value is, and its conversion into what the tracker libraries take.

``accelerator.log`` receives plain Python values, numpy and torch values, PIL
images and :class:`plait.tracking.Image` / :class:`plait.tracking.Histogram`.
:func:`kind` sorts them; the converters turn each kind into plain numbers or
numpy arrays. numpy and torch are imported inside the converters only.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from plait.tracking import Histogram, Image

if TYPE_CHECKING:
    import numpy as np

SCALAR = "scalar"
TEXT = "text"
SCALARS = "dict of scalars"
IMAGE = "image"
IMAGES = "list of images"
HISTOGRAM = "histogram"
OTHER = "other"


def _root(value: Any) -> str:
    return type(value).__module__.partition(".")[0]


def is_array(value: Any) -> bool:
    """A torch tensor or a numpy array or numpy scalar."""
    return _root(value) in ("torch", "numpy") and hasattr(value, "shape")


def _size(value: Any) -> int:
    numel = getattr(value, "numel", None)
    return int(numel()) if callable(numel) else int(value.size)


def is_pil_image(value: Any) -> bool:
    return _root(value) == "PIL" and hasattr(value, "mode") and hasattr(value, "size")


def is_image(value: Any) -> bool:
    return isinstance(value, Image) or is_pil_image(value)


def _real(array: Any) -> bool:
    """Whether an array holds real numbers (booleans, integers or floats)."""
    if _root(array) == "torch":
        return not array.is_complex()
    return getattr(array, "dtype", None) is not None and array.dtype.kind in "biuf"


def is_scalar(value: Any) -> bool:
    if isinstance(value, numbers.Real):
        return True
    return is_array(value) and _real(value) and _size(value) == 1


_PLAIN_NUMBERS = (float, int, bool)


def kind(value: Any) -> str:
    """The kind of a logged value: one of the constants of this module."""
    if type(value) in _PLAIN_NUMBERS:  # the common case, first and cheapest
        return SCALAR
    if isinstance(value, str):
        return TEXT
    if is_array(value):
        if not _real(value):
            return OTHER
        return SCALAR if _size(value) == 1 else HISTOGRAM
    if isinstance(value, numbers.Real):
        return SCALAR
    if is_image(value):
        return IMAGE
    if isinstance(value, Histogram):
        return HISTOGRAM
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and is_scalar(v) for k, v in value.items()):
        return SCALARS
    if isinstance(value, (list, tuple)) and value and all(is_image(item) for item in value):
        return IMAGES
    return OTHER


def describe(value: Any) -> str:
    """A short name of a value's type for messages (``torch.Tensor``, ``dict``...)."""
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def scalar(value: Any) -> int | float:
    """A scalar as a Python ``int`` or ``float`` (``bool`` becomes ``int``)."""
    if type(value) in (float, int):
        return value  # type: ignore[no-any-return]
    if is_array(value):
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def scalars(value: Mapping[str, Any]) -> dict[str, int | float]:
    return {key: scalar(item) for key, item in value.items()}


def _numpy(data: Any) -> np.ndarray:
    import numpy as np

    if _root(data) == "torch":
        data = data.detach()
        if data.is_floating_point():
            data = data.float()
        return data.cpu().numpy()  # type: ignore[no-any-return]
    return np.asarray(data)


def image_array(value: Any) -> np.ndarray:
    """An image as a ``uint8`` array of shape ``(H, W)`` or ``(H, W, C)`` with 3 or 4 channels.

    :raises ValueError: when the shape is not an image's.
    """
    import numpy as np

    image = value if isinstance(value, Image) else Image(value)
    data = image.data
    channels = image.channels or ("first" if _root(data) == "torch" else "last")
    if is_pil_image(data):
        array, channels = np.asarray(data), "last"
    else:
        array = _numpy(data)
    if array.ndim == 3 and channels == "first":
        array = array.transpose(1, 2, 0)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(
            f"an image has shape (H, W), (C, H, W) or (H, W, C) with 1, 3 or 4 channels, not {tuple(array.shape)} "
            f"(channels={channels!r}; set plait.tracking.Image(data, channels=...) if the axes are the other way)"
        )
    if array.dtype.kind == "f":
        return (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)  # type: ignore[no-any-return]
    return np.clip(array, 0, 255).astype(np.uint8)  # type: ignore[no-any-return]


def caption(value: Any) -> str | None:
    return value.caption if isinstance(value, Image) else None


def histogram_array(value: Any) -> np.ndarray:
    """The values of a histogram, flattened to a ``float64`` array."""
    import numpy as np

    data = value.values if isinstance(value, Histogram) else value
    return np.asarray(_numpy(data), dtype=np.float64).ravel()


def flat_config(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings flattened with ``/`` in the names; scalars as numbers, ``None`` kept, anything else as text."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_config(value, prefix=f"{name}/"))
        elif value is None or isinstance(value, (bool, str)):
            flat[name] = value
        elif is_scalar(value):
            flat[name] = scalar(value)
        else:
            flat[name] = str(value)
    return flat
