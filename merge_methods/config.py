"""Method configs: the base class every ``<Name>Config`` extends, and the value checks they share.

A config is a frozen dataclass whose fields all have defaults (the registry's, overridable with ``--set``).
It is read with :func:`vlamergebench.configs.from_mapping` (unknown keys and wrong types raise
:class:`ConfigError` naming the config class and field) and hashed with the package's one config hash.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vlamergebench.configs import ConfigError, from_mapping
from vlamergebench.provenance import config_hash

__all__ = ["ConfigError", "MethodConfig", "TaskVectorConfig", "check_choice", "check_fraction"]

C = TypeVar("C", bound="MethodConfig")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every ``<Name>Config``: a JSON round trip rejecting unknown keys and wrong types; a hash."""

    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults included, as JSON-ready values."""
        return {
            field.name: list(value) if isinstance(value := getattr(self, field.name), tuple) else value
            for field in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a mapping; unknown keys and values of the wrong type raise :class:`ConfigError`."""
        return from_mapping(cls, data, cls.__name__)

    def hash(self) -> str:
        """The resolved config's hash: the results store's, so a leaderboard row matches its merged dir."""
        return config_hash(self.to_dict())


@dataclass(frozen=True)
class TaskVectorConfig(MethodConfig):
    """Base of the configs of task-vector methods.

    Attributes:
        task_vectors: Where tau comes from: "lora" (the factors, exact) or "dense" (folded weights minus the
            base).
    """

    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "task_vectors", self.task_vectors, ("lora", "dense"))


def check_fraction(owner: str, name: str, value: float, *, open_top: bool = False) -> None:
    """Raise unless ``value`` is in [0, 1] (or [0, 1) with ``open_top``)."""
    if not (0.0 <= value < 1.0 if open_top else 0.0 <= value <= 1.0):
        raise ConfigError(f"{owner}: {name} must be in [0, 1{')' if open_top else ']'}, got {value}")


def check_choice(owner: str, name: str, value: str, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")
