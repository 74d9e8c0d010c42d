"""One registry pattern for every room (merge methods, routers, presets, leaderboard builders).

Modelled on Gymnasium's ``registration.py``: a registry is a dict of frozen spec dataclasses, each naming an
``entry_point`` string ``"package.module:attr"`` that is imported only when the entry is made. Registering
therefore imports nothing, and ``import vlamergebench`` stays cheap. Environments use Gymnasium's own
registry; everything else uses this module, which depends on the standard library only so that any room
may import it.

Plug-ins: a registry made with ``entry_point_group`` also lists the entry points installed packages declare
in that group (``[project.entry-points."vlamergebench.merge_methods"]`` in their ``pyproject.toml``). They
are read from the installed distributions' metadata when the registry is first asked for its names, and
again whenever it is asked for a name it does not hold (a package installed meanwhile), without importing
the plug-in; a name already registered here is kept and the plug-in's
skipped with a warning. A plug-in's spec records its distribution and version (``metadata["plugin"]``).

Example:
    >>> METHODS = Registry("merge method")
    >>> METHODS.register("ta", "vlamergebench.merge_methods.task_arithmetic:TaskArithmetic", paper="x")
    >>> sorted(METHODS.names())
    ['ta']
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

logger = logging.getLogger(__name__)


class UnknownNameError(KeyError):
    """A name (a method, a router, a preset, a builder) that the registry does not hold: bad input.

    A ``KeyError``, so a lookup reads like a mapping's, but its own type, so a command line reports exactly
    this as one line while a ``KeyError`` from a bug keeps its traceback.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""  # KeyError's own str() would quote the message


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

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        """Create an empty registry; ``kind`` names the entries in error messages (e.g. "merge method").

        ``entry_point_group`` (e.g. ``"vlamergebench.merge_methods"``) adds installed plug-ins, found lazily.
        """
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._specs: dict[str, Spec] = {}
        self._discovered = False

    def _discover(self, again: bool = False) -> None:
        """Register the group's installed entry points (reads metadata only; imports nothing).

        Runs once, or again with ``again`` (a name was missing: a plug-in may have been installed since).
        """
        if self.entry_point_group is None or (self._discovered and not again):
            return
        self._discovered = True
        for point in importlib.metadata.entry_points(group=str(self.entry_point_group)):
            distribution = point.dist.name if point.dist is not None else None
            version = point.dist.version if point.dist is not None else None
            known = self._specs.get(point.name)
            if known is not None and known.entry_point == point.value:
                continue  # found by an earlier scan
            if known is not None:
                logger.warning(
                    "%s %r of plug-in %s is skipped: the name is already registered (%s)",
                    self.kind,
                    point.name,
                    distribution,
                    self._specs[point.name].entry_point,
                )
                continue
            try:
                self.register(
                    point.name, point.value, plugin={"distribution": distribution, "version": version}
                )
            except ValueError as error:  # a malformed entry point: skip it, say why
                logger.warning("plug-in %s: %s", distribution, error)

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
        """The spec of ``name``; an unknown name raises :class:`UnknownNameError` listing the known ones."""
        if name not in self._specs:
            self._discover(again=True)
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """All registered names, in registration order (installed plug-ins last)."""
        self._discover()
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
        if name not in self._specs:
            self._discover(again=True)
        return name in self._specs

    def __iter__(self) -> Iterator[Spec]:
        self._discover()
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        self._discover()
        return len(self._specs)
