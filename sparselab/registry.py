"""A name → object table with a decorator to add to it and a lookup whose error names the close matches: the
shape of every registry in sparselab (P3B's criteria and allocations, ART's methods).

Example:
    >>> SHAPES = Registry("shape")
    >>> @SHAPES.register("square")
    ... class Square:
    ...     pass
    >>> SHAPES.lookup("square").name, sorted(SHAPES)
    ('square', ['square'])
    >>> SHAPES.lookup("sqare")
    Traceback (most recent call last):
    ...
    sparselab.errors.UnknownNameError: unknown shape 'sqare'. Did you mean 'square'? Available: square
"""
from __future__ import annotations

import warnings
from typing import Callable, TypeVar

from .errors import ConfigError, unknown_name

T = TypeVar("T")


class Registry(dict):
    """A dict of registered names (``kind`` names them in errors). :meth:`register` is a decorator; a registered
    class gets its name as the ``name`` attribute."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the class or function under ``name``; a later registration replaces an earlier one, with a
        warning (a run recorded under that name would otherwise be mistaken for the one it replaced). A class
        registered under a second name (an alias) keeps the ``name`` it was first registered under, which still
        finds it."""
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} is registered under a non-empty string name, got {name!r}")

        def add(obj: T) -> T:
            before, now = (getattr(o, "__qualname__", repr(o)) for o in (self.get(name), obj))
            if name in self and before != now:  # the same definition run again (a notebook cell) is no news
                warnings.warn(f"{self.kind} {name!r} was registered before ({before}); {now} replaces it", stacklevel=2)
            if isinstance(obj, type):
                first = obj.__dict__.get("name")
                if not (isinstance(first, str) and first != name and self.get(first) is obj):
                    obj.name = name
            self[name] = obj
            return obj
        return add

    def lookup(self, name: str):
        """The object registered under ``name``, or an :class:`~sparselab.errors.UnknownNameError` that lists the
        registered names and the close matches."""
        if not isinstance(name, str):
            raise ConfigError(f"a {self.kind} is named by a string (one of {', '.join(sorted(self)) or 'none'}), "
                              f"got {name!r}")
        if name not in self:
            raise unknown_name(self.kind, name, self)
        return self[name]
