"""One way to read a config dataclass from JSON, :func:`from_mapping`, and its one error, ConfigError.

Every ``from_dict`` of the package (method, policy, training, evaluation, collection, perturbation and
safety configs) goes through :func:`from_mapping`, so that unknown keys, missing keys and values of the wrong
type are reported the same way: one line naming where the data came from (a file, a flag, a field path),
the field, what was found and what was expected. Standard library only, so every room may import it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")

DEFAULT_EPISODES_PER_TASK = 5
"""Episodes per task of ``run`` and ``eval`` when none are given (flags and config dataclasses alike): 5 keeps
the embedded default's main command around 10 minutes on 2 cores; the committed board uses 10, LIBERO's
protocol 50."""


class ConfigError(ValueError):
    """A config is invalid; the message names where it came from, the field, what was found and expected."""


def _coerce(where: str, key: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(where, key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: field {key!r} expects {hint}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: field {key!r} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_mapping(hint, value, f"{where}.{key}")
    if origin is tuple or hint is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: field {key!r} expects a list, got {value!r}")
        if (len(args) == 2 and args[1] is Ellipsis) or len(args) == 1:
            return tuple(_coerce(where, key, item, args[0]) for item in value)
        if not args:
            return tuple(value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: field {key!r} expects {len(args)} items, got {value!r}")
        return tuple(_coerce(where, key, item, arg) for item, arg in zip(value, args, strict=True))
    if origin in (dict, Mapping, typing.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: field {key!r} expects a mapping, got {value!r}")
        if len(args) == 2:
            return {
                _coerce(where, key, name, args[0]): _coerce(where, f"{key}.{name}", item, args[1])
                for name, item in value.items()
            }
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: field {key!r} expects true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: field {key!r} expects an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: field {key!r} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: field {key!r} expects a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: field {key!r} has an unsupported type {hint}")


def from_mapping(cls: type[T], data: Any, where: str) -> T:
    """Build the dataclass ``cls`` from a JSON mapping, checking keys and coercing values by type hint.

    Lists become tuples, ints become floats where a float is declared, nested dataclasses are read the same
    way (their ``where`` is ``<where>.<field>``). Unknown keys, missing required keys and values of the wrong
    type raise :class:`ConfigError`; the ``__post_init__`` of ``cls`` then checks values.

    Args:
        cls: A dataclass.
        data: The decoded JSON (anything: a non-mapping raises).
        where: Where the data came from, as the message should name it (a file, a flag, a field path).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
    fields = dataclasses.fields(cls)
    known = {field.name for field in fields}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    missing = sorted(
        field.name
        for field in fields
        if field.name not in data
        and field.default is dataclasses.MISSING
        and field.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _coerce(where, key, value, hints[key]) for key, value in data.items()})
