"""One-line delegates from the Accelerator to its parts, typed like the parts' own methods.

``gather = delegate("collectives", Collectives.gather)`` makes ``accelerator.gather`` the
bound method of ``accelerator.collectives`` (so a backend's subclass answers, and the call
costs no extra frame); ``process_index = attribute("process")`` reads the part's attribute
of the same name. mypy sees the part's signature and type in both cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, overload

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Self = TypeVar("_Self")


class delegate(Generic[_P, _R]):
    """The method ``function.__name__`` of the part in attribute ``part`` of the instance."""

    def __init__(self, part: str, function: Callable[Concatenate[Any, _P], _R]) -> None:
        self.part = part
        self.name = function.__name__
        self.__doc__ = function.__doc__
        self.__wrapped__ = function

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> delegate[_P, _R]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any]) -> Callable[_P, _R]: ...

    def __get__(self, instance: object | None, owner: type[Any]) -> Any:
        if instance is None:
            return self
        return getattr(getattr(instance, self.part), self.name)


class attribute(Generic[_R]):
    """The attribute of the same name (or ``name``) of the part in attribute ``part``; read-only unless
    ``writable``."""

    def __init__(self, part: str, name: str | None = None, doc: str | None = None, writable: bool = False) -> None:
        self.part = part
        self.name = name or ""
        self.writable = writable
        self.__doc__ = doc

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.name = self.name or name

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> attribute[_R]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any]) -> _R: ...

    def __get__(self, instance: object | None, owner: type[Any]) -> Any:
        if instance is None:
            return self
        return getattr(getattr(instance, self.part), self.name)

    def __set__(self, instance: object, value: _R) -> None:
        if not self.writable:
            raise AttributeError(f"{type(instance).__name__}.{self.name} is read-only")
        setattr(getattr(instance, self.part), self.name, value)
