"""Merge methods and routers from outside this package: installed plug-ins and ``module:Name`` import paths.

Two ways in (``docs/plugins.md`` walks an example end to end):

- **Installed plug-ins**: a package declares entry points in the groups ``vlamergebench.merge_methods`` and
  ``vlamergebench.routers``; the registries list them beside the built-in entries (``vlamergebench
  methods``, ``--help``) without importing them until used.
- **Import paths**: ``--method package.module:Name`` names a method class on the Python path. It is
  registered under that very string when the caller (the command line, or Python code) asks for it.

Trust: code is imported only from what the caller names or what is installed. A name read from a file (a
merged model's ``merged.json``, a results bundle, an expert set) is never imported on its own authority: a
merged model recording an import path is read only in a process where that same path was given by the caller
(:func:`trust_method`), which is how spawned workers get it from the driver. A merged model records where
its method came from (:func:`method_source`: entry point, distribution, version), and reading it where the
installed method differs is refused, naming both.

A plug-in method class declares what the built-in registrations carry as metadata, as class attributes:
``paper``, ``arxiv``, ``needs_task_identity``, ``router`` (a registered router name or None) and ``stores``;
``kind`` it already has (``OneShotMethod`` / ``ContinualMethod``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vlamergebench.merge_methods.registry import (
    IMPORT_PATH,
    METHODS,
    PluginError,
    is_import_path,
    load_method_class,
    register_import_path,
    resolve_method,
)

METHOD_GROUP = "vlamergebench.merge_methods"
ROUTER_GROUP = "vlamergebench.routers"
_METADATA_DEFAULTS: dict[str, Any] = {
    "paper": None,
    "arxiv": None,
    "needs_task_identity": False,
    "router": None,
    "stores": None,
}


def trust_method(name: str | None) -> None:
    """Let this process read merged models of method ``name`` (a registered name, or an import path).

    Workers call it with the method the driver was given, before opening a merged model.
    """
    if name is not None and is_import_path(name):
        register_import_path(name)


def method_metadata(name: str) -> dict[str, Any]:
    """What the catalogue knows of a method: kind, paper, arxiv, needs_task_identity, router, stores, plugin.

    Built-in entries carry it in the registry (nothing is imported); a plug-in's is read from its class.
    """
    spec = resolve_method(name)
    metadata = {**_METADATA_DEFAULTS, "kind": "one_shot", "plugin": None, **spec.metadata}
    if spec.metadata.get("plugin") is not None:
        method_class = load_method_class(name)
        for key in (*_METADATA_DEFAULTS, "kind"):
            metadata[key] = getattr(method_class, key, metadata[key])
    return metadata


def method_source(name: str) -> dict[str, Any]:
    """Where method ``name`` comes from: its entry point, and the distribution and version installing it."""
    spec = resolve_method(name)
    plugin = spec.metadata.get("plugin")
    if plugin is None:
        from vlamergebench import __version__

        return {"entry_point": spec.entry_point, "distribution": "vlamergebench", "version": __version__}
    return {"entry_point": spec.entry_point, **plugin}


def recorded_method(manifest: Mapping[str, Any], where: str) -> str:
    """The method name a merged model records, once it is safe and consistent to make it in this process.

    Args:
        manifest: The parsed ``merged.json``.
        where: The manifest's path, for messages.

    Raises:
        PluginError: The method is an import path this process was not given, is not installed, or differs
            from the entry point or version the merged model was written with.
    """
    name = str(manifest["method"])
    recorded = manifest.get("method_source") or {}
    origin = recorded.get("entry_point", name)
    package = (
        f" from {recorded['distribution']} {recorded['version']}" if recorded.get("distribution") else ""
    )
    if name not in METHODS:
        if is_import_path(name):
            raise PluginError(
                f"{where}: method {name!r} is an import path; it is imported only when the caller names it "
                f"(--method {name}), never on a file's word"
            )
        raise PluginError(
            f"{where}: written by merge method {name!r} ({origin}{package}), which is not installed in this "
            "process; install that package (or pass --method package.module:Name)"
        )
    if recorded:
        current = method_source(name)
        differs = [key for key in ("entry_point", "version") if recorded.get(key) != current.get(key)]
        if differs:
            raise PluginError(
                f"{where}: written by {name!r} = {origin}{package}; this process has "
                f"{current['entry_point']} from {current['distribution']} {current['version']}; "
                "re-merge with the installed version"
            )
    return name


def config_fields(name: str) -> list[dict[str, Any]]:
    """The method's config fields: name, type and default (the registration's own defaults applied)."""
    config_class = load_method_class(name).config_class
    preset = dict(METHODS.spec(name).kwargs)
    fields = []
    for field in dataclasses.fields(config_class):
        if field.name in preset:
            default = preset[field.name]
        elif field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        default = list(default) if isinstance(default, tuple) else default
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        fields.append({"name": field.name, "type": kind, "default": default})
    return fields


__all__ = [
    "IMPORT_PATH",
    "PluginError",
    "config_fields",
    "is_import_path",
    "load_method_class",
    "method_metadata",
    "method_source",
    "recorded_method",
    "register_import_path",
    "resolve_method",
    "trust_method",
]
