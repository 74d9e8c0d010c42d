"""One registry pattern for every room (merge methods, routers, presets, leaderboard builders).

Modelled on Gymnasium's ``registration.py``: a registry is a dict of frozen spec dataclasses, each naming an
``entry_point`` string ``"package.module:attr"`` that is imported only when the entry is made. Registering
therefore imports nothing, and ``import vlamergebench`` stays cheap. Environments use Gymnasium's own
registry; everything else uses this module, which depends on the standard library only so that any room
may import it.

Example:
    >>> METHODS = Registry("merge method")
    >>> METHODS.register("ta", "vlamergebench.merge_methods.task_arithmetic:TaskArithmetic", paper="x")
    >>> sorted(METHODS.names())
    ['ta']
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Spec:
    """What a registry knows about one entry.

    Attributes:
        name: The registered name (lower_snake, or ``family/Name-vN`` where a family needs versions).
        entry_point: ``"package.module:attr"``; the attribute is a class or a factory function.
        kwargs: Keyword arguments passed to the entry point by ``make``; call-site overrides win.
        metadata: Facts about the entry that callers may read without importing it (paper, kind, ...).
    """

    name: str
    entry_point: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        module, sep, attr = self.entry_point.partition(":")
        if not (module and sep and attr):
            raise ValueError(
                f"entry_point of {self.name!r} must look like 'package.module:attr', got {self.entry_point!r}"
            )
        object.__setattr__(self, "kwargs", MappingProxyType(dict(self.kwargs)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


class Registry:
    """A named collection of :class:`Spec` entries with lazy construction."""

    def __init__(self, kind: str) -> None:
        """Create an empty registry; ``kind`` names the entries in error messages (e.g. "merge method")."""
        self.kind = kind
        self._specs: dict[str, Spec] = {}

    def register(
        self, name: str, entry_point: str, *, kwargs: Mapping[str, Any] | None = None, **metadata: Any
    ) -> Spec:
        """Add an entry; registering a name twice is an error, not an override."""
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._specs[name].entry_point})")
        spec = Spec(name=name, entry_point=entry_point, kwargs=kwargs or {}, metadata=metadata)
        self._specs[name] = spec
        return spec

    def spec(self, name: str) -> Spec:
        """Return the spec of ``name``; an unknown name raises ``KeyError`` listing the known ones."""
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """All registered names, in registration order."""
        return list(self._specs)

    def load(self, name: str) -> Any:
        """Import and return the entry point's attribute."""
        module_name, _, attr = self.spec(name).entry_point.partition(":")
        module = importlib.import_module(module_name)
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ImportError(
                f"{self.kind} {name!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None

    def make(self, name: str, **overrides: Any) -> Any:
        """Build the entry: ``load(name)(**{**spec.kwargs, **overrides})``."""
        spec = self.spec(name)
        return self.load(name)(**{**spec.kwargs, **overrides})

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[Spec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)
