"""Every kind of step, by name: the one place that turns a journal's ``{"name", "params"}`` back into a step.

Like ``prometheus_client``'s registry it refuses a second registration under a name already taken:
two classes answering to ``restart`` would make a journal row mean whichever was imported last.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from watcher.playbook.base import Step

S = TypeVar("S", bound=type[Step])


class DuplicateStepKind(ValueError):
    pass


class UnknownStepKind(KeyError):
    pass


class StepRegistry:
    def __init__(self) -> None:
        self._kinds: dict[str, type[Step]] = {}

    def register(self, cls: S) -> S:
        """Class decorator: ``@register`` above a :class:`Step` subclass with a ``kind``."""
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"{cls.__name__} has no kind")
        if kind in self._kinds:
            raise DuplicateStepKind(
                f"step kind {kind!r} is already registered by {self._kinds[kind].__name__}; refusing {cls.__name__}"
            )
        self._kinds[kind] = cls
        return cls

    def kinds(self) -> dict[str, type[Step]]:
        return dict(self._kinds)

    def get(self, kind: str) -> type[Step]:
        try:
            return self._kinds[kind]
        except KeyError:
            raise UnknownStepKind(kind) from None

    def step_from_json(self, data: Mapping[str, Any]) -> Step:
        """The inverse of :meth:`Step.to_json`. Raises :class:`UnknownStepKind` or pydantic's
        ``ValidationError`` for what it cannot read."""
        return self.get(str(data["name"])).from_params(data.get("params") or {})


REGISTRY = StepRegistry()
register = REGISTRY.register
step_from_json = REGISTRY.step_from_json
