"""How the conformance suites find a plug-in family's members: every concrete subclass of the
family's base defined in the product, so a new implementation is in the suite the moment it
exists (the suites then require a factory or rig for it)."""

from __future__ import annotations

import inspect
from typing import TypeVar

T = TypeVar("T")


def implementations(base: type[T], *, private: bool = True) -> set[type[T]]:
    """Concrete subclasses of ``base`` (at any depth) from ``watcher.*``; ``private=False`` leaves
    out ``_Named`` helpers that are shared bases rather than members."""
    found: set[type[T]] = set()
    todo = list(base.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if not cls.__module__.startswith("watcher.") or inspect.isabstract(cls):
            continue
        if private or not cls.__name__.startswith("_"):
            found.add(cls)
    return found
