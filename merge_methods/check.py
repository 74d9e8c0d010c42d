"""``check_method``: the contract every registered merge method must meet, as small named checks.

After Gymnasium's ``check_env`` (``gymnasium/utils/env_checker.py``): each check raises
:class:`MethodContractError` naming the method, skill, file or tensor. ``tests/merge_methods`` runs
``check_method`` over every registry entry, so registering a method is what gets it tested.

Checks:
- ``check_config_round_trip``: the resolved config survives ``to_dict`` -> JSON -> ``from_dict`` unchanged,
  and the merged directory records exactly it and its hash.
- ``check_namespace``: every instantiated skill has exactly the base's tensor names (VLM + action expert),
  with the base's shapes and dtypes, and only finite values.
- ``check_determinism``: two merges with the same config (hence the same seed) give bit-identical tensors.
- ``check_storage``: the reported bytes equal the bytes on disk, and every file of the directory is counted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vlamergebench.merge_methods.base import MergeMethod
from vlamergebench.merge_methods.io import TensorFile
from vlamergebench.merge_methods.merged import STORAGE_FILE, MergedModel
from vlamergebench.merge_methods.registry import make_method
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet


class MethodContractError(AssertionError):
    """A merge method broke its contract; the message names the method and what differs."""


def check_config_round_trip(method: MergeMethod, merged: MergedModel) -> None:
    """The config round-trips through JSON, and the directory records it with its hash."""
    text = json.dumps(method.config.to_dict())
    again = type(method.config).from_dict(json.loads(text))
    if again != method.config:
        raise MethodContractError(f"{method.name}: config changed through JSON: {method.config} -> {again}")
    if merged.config != method.config.to_dict() or merged.config_hash != method.config.hash():
        raise MethodContractError(f"{method.name}: {merged.path} records another config or hash")


def check_namespace(method: MergeMethod, merged: MergedModel) -> dict[str, dict[str, torch.Tensor]]:
    """Each skill's tensors have the base's names, shapes and dtypes, all finite; returns them by skill."""
    reference: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for file_name in (VLM_FILE, ACTION_EXPERT_FILE):
        base_file = TensorFile(merged.base.file(file_name), "base")
        reference.update({name: (base_file.shape(name), base_file.dtype(name)) for name in base_file.names})
    by_skill = {}
    for skill in merged.skills:
        tensors = merged.instantiate(skill).tensors
        missing, extra = sorted(set(reference) - set(tensors)), sorted(set(tensors) - set(reference))
        if missing or extra:
            raise MethodContractError(
                f"{method.name}, skill {skill!r}: missing {missing[:5]}, extra {extra[:5]}"
            )
        for name, tensor in tensors.items():
            shape, dtype = reference[name]
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise MethodContractError(
                    f"{method.name}, skill {skill!r}: tensor {name!r} is {tensor.dtype} "
                    f"{list(tensor.shape)}, the base has {dtype} {list(shape)}"
                )
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise MethodContractError(f"{method.name}, skill {skill!r}: tensor {name!r} is not finite")
        by_skill[skill] = tensors
    return by_skill


def check_determinism(
    method: MergeMethod, first: dict[str, dict[str, torch.Tensor]], second: dict[str, dict[str, torch.Tensor]]
) -> None:
    """Two merges with one config give bit-identical tensors for every skill."""
    for skill, tensors in first.items():
        for name, tensor in tensors.items():
            if not torch.equal(tensor, second[skill][name]):
                raise MethodContractError(
                    f"{method.name}, skill {skill!r}: tensor {name!r} differs between runs"
                )


def check_storage(method: MergeMethod, merged: MergedModel) -> None:
    """Reported storage equals the bytes on disk, and every file of the directory is counted."""
    storage = merged.storage
    on_disk = {
        str(path.relative_to(merged.path)): path.stat().st_size
        for path in merged.path.rglob("*")
        if path.is_file() and path.name != STORAGE_FILE
    }
    counted = {entry.path: entry.bytes for entry in storage.files if entry.component != "base"}
    if counted != on_disk:
        differ = sorted(set(counted.items()) ^ set(on_disk.items()))[:5]
        raise MethodContractError(f"{method.name}: storage manifest and directory differ: {differ}")
    for entry in storage.files:
        if entry.component == "base" and os.path.getsize(entry.path) != entry.bytes:
            raise MethodContractError(f"{method.name}: base file {entry.path} is not {entry.bytes} bytes")
    if storage.total_bytes != sum(on_disk.values()) + sum(
        e.bytes for e in storage.files if e.component == "base"
    ):
        raise MethodContractError(
            f"{method.name}: total_bytes {storage.total_bytes} is not the sum of its files"
        )


def check_method(
    name: str, experts: ExpertSet, workdir: str | os.PathLike[str], **overrides: Any
) -> MergedModel:
    """Merge ``experts`` twice with method ``name`` and run every check; returns the first merged model."""
    workdir = Path(workdir)
    method = make_method(name, **overrides)
    merged = method.merge(experts, workdir / f"{name}-a", progress=False)
    again = make_method(name, **overrides).merge(experts, workdir / f"{name}-b", progress=False)
    check_config_round_trip(method, merged)
    first = check_namespace(method, merged)
    check_determinism(method, first, check_namespace(method, again))
    check_storage(method, merged)
    return merged
