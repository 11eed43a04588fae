"""Names a package exports but imports on first use (PEP 562), so that importing it stays cheap.

A package lists each name with the module that defines it, declares the same names under
``TYPE_CHECKING`` for type checkers, and installs the pair this returns::

    __getattr__, __dir__ = lazy_names(globals(), {"Accelerator": "plait.accelerator"})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_names(
    namespace: dict[str, Any], module_of: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A module ``__getattr__`` that imports ``module_of[name]`` on first access and caches the value
    in ``namespace``, and the matching ``__dir__``."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        module = module_of.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *module_of})

    return __getattr__, __dir__
