"""Shards: one run's episodes split over independent invocations, on any machines, joined afterwards.

``vlamergebench run ... --shard i/N`` runs shard ``i`` (0-based, ``0 <= i < N``) of the *episode plan*: every
(run, admission step, task unit, episode index) the command would run. The plan is cut into N contiguous
slices of (task unit, episode index) pairs, in the order the command lists them; a pair belongs to one shard
in every run and phase, so a shard builds the simulators of its own tasks only. The slice is a pure
function of the command (never of what is already stored), so a shard killed and rerun resumes its own
episodes, and ``--shard $SLURM_ARRAY_TASK_ID/N`` in a job array covers the plan exactly once.

Each invocation adds ``{shard, plan}`` to ``<store>.shards.json`` beside the store (``results.shards.json``),
so :mod:`vlamergebench.eval.combine` can tell an expected episode from a missing one and a shard of another
plan from a shard of this one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlamergebench.provenance import config_hash

MANIFEST_SUFFIX = ".shards.json"


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: expected 0 <= i < N with N >= 1")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` -> Shard; anything else raises naming the flag and the expected form."""
        parts = text.split("/")
        if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4")
        index, count = (int(part) for part in parts)
        if count < 1 or index >= count:
            raise ValueError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


UnitKey = tuple[str, str, str, str]  # (skill, env_id, variant, task)


def plan_document(evaluations: Sequence[Any]) -> dict[str, Any]:
    """The episode plan of ``evaluations`` (runner ``Evaluation``s) as plain JSON data."""
    return {
        "evaluations": [
            {
                "run_id": evaluation.run.run_id,
                "admission_step": evaluation.phase.admission_step,
                "episodes_per_task": evaluation.phase.episodes_per_task,
                "units": [[u.skill, u.env_id, u.variant, u.task] for u in evaluation.phase.units],
            }
            for evaluation in evaluations
        ]
    }


def plan_hash(plan: Mapping[str, Any]) -> str:
    """Content hash of a plan document."""
    return config_hash(plan)


def _pairs(plan: Mapping[str, Any]) -> list[tuple[UnitKey, int]]:
    """Every distinct (unit, episode index) of the plan, units in first-listed order, then by index."""
    episodes: dict[UnitKey, int] = {}
    for evaluation in plan["evaluations"]:
        for unit in evaluation["units"]:
            key = tuple(unit)
            episodes[key] = max(episodes.get(key, 0), int(evaluation["episodes_per_task"]))
    return [(unit, k) for unit, count in episodes.items() for k in range(count)]


def shard_pairs(plan: Mapping[str, Any], shard: Shard) -> set[tuple[UnitKey, int]]:
    """The (unit, episode index) pairs of ``shard``: slice ``i`` of N near-equal contiguous slices."""
    pairs = _pairs(plan)
    start, stop = shard.index * len(pairs) // shard.count, (shard.index + 1) * len(pairs) // shard.count
    return set(pairs[start:stop])


def planned_keys(plan: Mapping[str, Any], pairs: set[tuple[UnitKey, int]] | None = None) -> set[tuple]:
    """Episode keys (``EPISODE_KEY`` order) of the plan, only those of ``pairs`` when given."""
    keys = set()
    for evaluation in plan["evaluations"]:
        for unit in evaluation["units"]:
            skill, env_id, variant, task = unit
            for k in range(int(evaluation["episodes_per_task"])):
                if pairs is None or (tuple(unit), k) in pairs:
                    keys.add(
                        (evaluation["run_id"], evaluation["admission_step"], skill, env_id, variant, task, k)
                    )
    return keys


def manifest_path(store_path: str | os.PathLike[str]) -> Path:
    """``<dir>/results.shards.json`` for ``<dir>/results.sqlite``."""
    path = Path(store_path)
    return path.with_name(path.stem + MANIFEST_SUFFIX)


def read_manifest(store_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The shard entries recorded beside a store (empty if it was never run as a shard)."""
    path = manifest_path(store_path)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        entries = data["shards"]
        for entry in entries:
            Shard(int(entry["index"]), int(entry["count"]))
            if plan_hash(entry["plan"]) != entry["plan_hash"]:
                raise ValueError("plan_hash does not match its plan")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a shard manifest ({type(error).__name__}: {error})") from None
    return entries


def record_shard(store_path: str | os.PathLike[str], plan: Mapping[str, Any], shard: Shard) -> None:
    """Add ``{shard, plan}`` to the store's manifest (once), replacing the file atomically."""
    entries = read_manifest(store_path)
    entry = {"index": shard.index, "count": shard.count, "plan_hash": plan_hash(plan), "plan": dict(plan)}
    if any(
        (e["index"], e["count"], e["plan_hash"]) == (shard.index, shard.count, entry["plan_hash"])
        for e in entries
    ):
        return
    path = manifest_path(store_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        json.dump({"shards": [*entries, entry]}, file, indent=1)
    os.replace(temporary, path)
