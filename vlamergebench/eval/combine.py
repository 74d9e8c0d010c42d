"""``vlamergebench combine``: join the stores of one run's shards into one store (one leaderboard entry).

Refused, with a message naming what differs: runs that share a name but not a configuration (method config
hash, expert set id, skills, settings), rows written by different package versions, shards of different
episode plans or shard counts, an episode stored twice, and a gap: a shard of the plan that is absent, or
an episode a present shard should hold and does not (rerun that shard's command: it resumes). Stores made
without ``--shard`` carry no plan; then every task of a phase must hold episodes ``0 .. n-1`` for one n.

Sources are opened read-only with the store's schema check; rows are copied as stored. Recorded rollout
videos come along: each video row with its MP4 file, copied from the shard's directory to the same relative
path beside the combined store (a video row whose file is missing is refused, naming it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlamergebench.eval.shards import Shard, planned_keys, read_manifest, record_shard, shard_pairs
from vlamergebench.eval.store import EPISODE_KEY, ResultsStore, StoreError, is_video_path, resolve_store_path

# What a run's configuration is, column by column, in the runs table (created_at is when, not what).
_RUN_FIELDS = ("method", "method_config_hash", "expert_set_id", "skills_json", "protocol", "routing_mode",
               "router", "run_seed", "settings_json", "method_config_json")  # fmt: skip
_SAME_RUN = ("method", "protocol", "routing_mode", "router", "run_seed")
_EXAMPLES = 3


class CombineError(ValueError):
    """The stores are not shards of one run, or do not cover it."""


@dataclass(frozen=True)
class CombineSummary:
    """What was joined."""

    out: Path
    sources: int
    runs: int
    episodes: int
    shards: tuple[str, ...]


@dataclass
class _Source:
    path: Path
    runs: dict[str, dict[str, Any]]
    episodes: tuple[list[str], list[tuple[Any, ...]]]
    storage: tuple[list[str], list[tuple[Any, ...]]]
    runs_table: tuple[list[str], list[tuple[Any, ...]]]
    shards: list[dict[str, Any]]
    videos: tuple[list[str], list[tuple[Any, ...]]]


def _load(path: str | os.PathLike[str]) -> _Source:
    store_path = resolve_store_path(path)
    with ResultsStore.open(store_path, readonly=True) as store:
        runs_table = store.table_rows("runs")
        runs = {row[0]: dict(zip(runs_table[0], row, strict=True)) for row in runs_table[1]}
        episodes, storage = store.table_rows("episodes"), store.table_rows("storage")
        videos = store.table_rows("videos")
    return _Source(store_path, runs, episodes, storage, runs_table, read_manifest(store_path), videos)


def _video_files(sources: Sequence[_Source]) -> list[tuple[Path, str]]:
    """``(file, path relative to the store)`` of every video row; a missing file raises."""
    files = []
    for source in sources:
        columns, rows = source.videos
        for row in rows:
            relative = row[columns.index("path")]
            if not is_video_path(relative):
                raise CombineError(f"{source.path}: video path {relative!r}; expected videos/.../<name>.mp4")
            file = source.path.parent / relative
            if not file.is_file():
                raise CombineError(f"{source.path}: video {relative} of episode {row[:7]} is missing")
            files.append((file, relative))
    return files


def _check_runs(sources: Sequence[_Source]) -> None:
    """Every run name means one configuration; shards of a run sharing method, seed and routing share it."""
    first: dict[str, tuple[Path, dict[str, Any]]] = {}
    by_identity: dict[tuple[Any, ...], tuple[Path, str, dict[str, Any]]] = {}
    for source in sources:
        for run_id, run in source.runs.items():
            if run_id in first and (differ := _differences(first[run_id][1], run)):
                raise CombineError(
                    f"run {run_id} differs between {first[run_id][0]} and {source.path}: {differ}"
                )
            first.setdefault(run_id, (source.path, run))
            identity = tuple(run[name] for name in _SAME_RUN)
            other = by_identity.setdefault(identity, (source.path, run_id, run))
            if other[1] != run_id:
                raise CombineError(
                    f"{other[0]} and {source.path} ran {run['method']} (seed {run['run_seed']}, routing "
                    f"{run['routing_mode']}) with different configurations: {_differences(other[2], run)}"
                )
    names = [set(source.runs) for source in sources]
    if any(runs != names[0] for runs in names):
        listing = "; ".join(f"{s.path}: {sorted(s.runs)}" for s in sources)
        raise CombineError(
            f"the stores hold different runs, so they are not shards of one command: {listing}"
        )


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    return ", ".join(f"{name} {a[name]!r} != {b[name]!r}" for name in _RUN_FIELDS if a[name] != b[name])


def _check_versions(sources: Sequence[_Source]) -> None:
    """All rows were written with the same tracked package versions."""
    seen: dict[str, dict[str, set[str]]] = defaultdict(
        lambda: defaultdict(set)
    )  # package -> version -> stores
    for source in sources:
        columns, rows = source.episodes
        column = columns.index("versions_json")
        for text in {row[column] for row in rows}:
            for package, version in json.loads(text).items():
                seen[package][version].add(str(source.path))
    differing = {package: versions for package, versions in seen.items() if len(versions) > 1}
    if differing:
        detail = "; ".join(
            f"{package}: "
            + ", ".join(f"{version} in {sorted(paths)}" for version, paths in sorted(versions.items()))
            for package, versions in sorted(differing.items())
        )
        raise CombineError(f"the stores were written with different package versions: {detail}")


def _check_plans(
    sources: Sequence[_Source],
) -> tuple[dict[str, Any] | None, set[tuple[Any, ...]], list[Shard]]:
    """The one plan of every shard entry, the keys the present shards should hold, and those shards."""
    entries = [(source.path, entry) for source in sources for entry in source.shards]
    if not entries:
        return None, set(), []
    unsharded = [str(source.path) for source in sources if not source.shards]
    if unsharded:
        raise CombineError(f"{unsharded}: not run with --shard, while other stores were; combine shards only")
    path0, entry0 = entries[0]
    for path, entry in entries[1:]:
        if entry["count"] != entry0["count"]:
            raise CombineError(
                f"shard counts differ: {path0} is shard {entry0['index']}/{entry0['count']}, "
                f"{path} is shard {entry['index']}/{entry['count']}"
            )
        if entry["plan_hash"] != entry0["plan_hash"]:
            raise CombineError(
                f"episode plans differ: {_plan_difference(path0, entry0['plan'], path, entry['plan'])}"
            )
    shards = sorted({Shard(entry["index"], entry["count"]) for _, entry in entries}, key=lambda s: s.index)
    missing = [
        str(Shard(i, entry0["count"])) for i in range(entry0["count"]) if i not in {s.index for s in shards}
    ]
    if missing:
        raise CombineError(
            f"shard(s) {', '.join(missing)} of the plan are missing (present: {list(map(str, shards))})"
        )
    expected = planned_keys(entry0["plan"], set().union(*(shard_pairs(entry0["plan"], s) for s in shards)))
    return entry0["plan"], expected, shards


def _plan_difference(path_a: Path, a: dict[str, Any], path_b: Path, b: dict[str, Any]) -> str:
    phases_a = {(e["run_id"], e["admission_step"]): e for e in a["evaluations"]}
    phases_b = {(e["run_id"], e["admission_step"]): e for e in b["evaluations"]}
    if set(phases_a) != set(phases_b):
        return f"{path_a} plans phases {sorted(phases_a)}, {path_b} plans {sorted(phases_b)}"
    for key, phase in phases_a.items():
        for field in ("episodes_per_task", "units"):
            if phase[field] != phases_b[key][field]:
                theirs = phases_b[key][field]
                return f"run {key[0]} step {key[1]}: {field} {phase[field]} in {path_a}, {theirs} in {path_b}"
    return f"{path_a} and {path_b} list the same phases in another order"


def _check_episodes(
    sources: Sequence[_Source], expected: set[tuple[Any, ...]] | None
) -> set[tuple[Any, ...]]:
    """No key twice; with a plan, every expected key present; without, tasks hold ``0 .. n-1``."""
    where: dict[tuple[Any, ...], Path] = {}
    for source in sources:
        columns, rows = source.episodes
        positions = [columns.index(name) for name in EPISODE_KEY]
        twice = []
        for row in rows:
            key = tuple(row[i] for i in positions)
            if key in where:
                twice.append((key, where[key]))
            where[key] = source.path
        if twice:
            examples = "; ".join(f"{key} also in {path}" for key, path in twice[:_EXAMPLES])
            raise CombineError(
                f"{source.path}: {len(twice)} episode(s) stored in more than one store, e.g. {examples}"
            )
    keys = set(where)
    if expected:
        missing = sorted(expected - keys)
        if missing:
            raise CombineError(
                f"{len(missing)} planned episode(s) are missing, e.g. {missing[:_EXAMPLES]}; rerun the shard "
                "command that holds them (it resumes), then combine again"
            )
        return keys
    indices: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    for key in keys:
        indices[key[:-1]].add(key[-1])
    per_phase: dict[tuple[Any, ...], set[int]] = defaultdict(set)
    for unit, found in indices.items():
        if found != set(range(len(found))):
            gaps = sorted(set(range(max(found) + 1)) - found)
            raise CombineError(
                f"episodes of {unit} have gaps at indices {gaps[:10]}; no shard plan explains them"
            )
        per_phase[unit[:2]].add(len(found))
    for phase, counts in per_phase.items():
        if len(counts) > 1:
            raise CombineError(
                f"run {phase[0]} step {phase[1]}: tasks hold different episode counts {sorted(counts)}"
            )
    return keys


def combine_stores(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> CombineSummary:
    """Check that ``sources`` are shards of one run and write their union to a new store at ``out``.

    Raises:
        CombineError: the stores are not shards of one run or leave gaps (the message names what differs).
        StoreError: a source is not a store; ``out`` already holds one.
    """
    if len(sources) < 1:
        raise CombineError("combine needs at least one store")
    out_path = resolve_store_path(out)
    paths = [resolve_store_path(source) for source in sources]
    if len({p.resolve() for p in paths}) != len(paths):
        raise CombineError(f"a store is named twice: {[str(p) for p in paths]}")
    if out_path.exists() or out_path.resolve() in {p.resolve() for p in paths}:
        raise StoreError(f"{out_path}: already exists; combine writes a new store")
    loaded = [_load(path) for path in paths]
    _check_runs(loaded)
    _check_versions(loaded)
    plan, expected, shards = _check_plans(loaded)
    keys = _check_episodes(loaded, expected if plan is not None else None)
    storage: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for source in loaded:
        for row in source.storage[1]:
            if storage.setdefault(row[:2], row) != row:
                raise CombineError(
                    f"{source.path}: storage of run {row[0]} step {row[1]} differs from another store's"
                )
    first = loaded[0]
    videos = _video_files(loaded)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for file, relative in videos:  # before the store: a store never names a video that is not there
        target = out_path.parent / relative
        if file.resolve() != target.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)
    partial = out_path.with_name(f".{out_path.stem}.partial{out_path.suffix}")
    partial.unlink(missing_ok=True)
    with ResultsStore.open(partial) as store:  # written aside, then moved: a failed combine leaves no store
        store.insert_rows("runs", first.runs_table[0], first.runs_table[1])
        for source in loaded:
            store.insert_rows("episodes", *source.episodes)
        for source in loaded:
            store.insert_rows("videos", *source.videos)
        store.insert_rows("storage", first.storage[0], list(storage.values()))
        store.check_integrity()
    os.replace(partial, out_path)
    if plan is not None:  # the combined store is every shard at once: a further combine still checks the plan
        for shard in shards:
            record_shard(out_path, plan, shard)
    return CombineSummary(out_path, len(loaded), len(first.runs), len(keys), tuple(map(str, shards)))
