"""Read-only access to the results of one or more stores and bundles, as the leaderboards consume them.

Sources: a run's output directory (holding ``results.sqlite``), a ``.sqlite`` file, a results bundle (a
``.zip`` file or a directory with ``manifest.json``, see :mod:`vlamergebench.eval.bundle`) or a Parquet
export (a directory with ``data/runs.parquet``, see :mod:`vlamergebench.eval.export`). Every source is
opened read-only with its schema verified, and the values an aggregate depends on are checked again here,
because a CHECK constraint only binds the program that wrote the file. A run may come from one source only:
the same run in two sources would count its episodes twice, so it is an error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vlamergebench.eval.bundle import is_bundle, open_bundle
from vlamergebench.eval.export import is_export, open_export
from vlamergebench.eval.store import (
    EPISODE_KEY,
    PROTOCOLS,
    ROUTING_MODES,
    ResultsStore,
    StoreError,
    is_infrastructure_error,
    is_video_path,
    resolve_store_path,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Results:
    """The rows of every source, concatenated; each frame has a ``source`` column naming where it came from.

    Treat the frames as read-only: builders copy before they change anything.

    Attributes:
        runs: One row per run (``ResultsStore.runs_frame``), with ``skills`` as a tuple.
        episodes: One row per episode, with the run's identity columns (``ResultsStore.episodes_frame``).
        storage: One row per (run, admission step) with storage figures.
        sources: The sources, in the order given.
        infrastructure_errors: Episodes lost to the infrastructure (a dead worker), same columns as
            ``episodes``; they are in no rate (a resume reruns them), only counted.
        videos: One row per recorded rollout video (``ResultsStore.videos_frame``), with ``video_file``: the
            MP4's absolute path where the source has the file, else ``""`` (a bundle carries no MP4).
    """

    runs: pd.DataFrame
    episodes: pd.DataFrame
    storage: pd.DataFrame
    sources: tuple[str, ...]
    infrastructure_errors: pd.DataFrame | None = None
    videos: pd.DataFrame | None = None

    def final_episodes(self, perturbed: bool = False) -> pd.DataFrame:
        """Episodes of each run's final model (admission step T = number of skills).

        Args:
            perturbed: Return the perturbed-variant episodes instead of the unperturbed ones.
        """
        final_step = self.runs.set_index("run_id")["skills"].map(len)
        episodes = self.episodes
        is_final = episodes["admission_step"].to_numpy() == episodes["run_id"].map(final_step).to_numpy()
        return episodes[is_final & ((episodes["variant"] != "") == perturbed).to_numpy()]


def _read_store(store_path: Path, source: str, video_root: Path | None) -> tuple[pd.DataFrame, ...]:
    """``runs, episodes, storage, videos`` of one store; video files are looked for under ``video_root``."""
    with ResultsStore.open(store_path, readonly=True) as store:
        frames = store.runs_frame(), store.episodes_frame(), store.storage_frame(), store.videos_frame()
    for frame in frames:
        frame["source"] = source
    for frame in frames[:2]:  # "" rather than None for oracle runs, so that entries group and compare simply
        frame["router"] = frame["router"].fillna("").astype(str)
    videos = frames[3]
    _check_videos(videos, frames[1], source)
    files = [None if video_root is None else (video_root / path).resolve() for path in videos["path"]]
    videos["video_file"] = [str(file) if file is not None and file.is_file() else "" for file in files]
    return frames


_JPEG_MAGIC = b"\xff\xd8\xff"
MAX_POSTER_BYTES = 256 << 10


def _check_videos(videos: pd.DataFrame, episodes: pd.DataFrame, source: str) -> None:
    """Paths as the store writes them, posters that are small JPEGs, one stored episode per video."""
    keys = set(episodes[list(EPISODE_KEY)].itertuples(index=False, name=None))
    for row in videos.itertuples(index=False):
        key = tuple(getattr(row, name) for name in EPISODE_KEY)
        if not is_video_path(row.path):
            raise StoreError(f"{source}: column videos.path holds {row.path!r}; expected videos/.../NAME.mp4")
        poster = (
            bytes(row.poster_jpeg) if isinstance(row.poster_jpeg, bytes | bytearray | memoryview) else b""
        )
        if not poster.startswith(_JPEG_MAGIC) or len(poster) > MAX_POSTER_BYTES:
            raise StoreError(
                f"{source}: column videos.poster_jpeg of {row.path} is not a JPEG of at most "
                f"{MAX_POSTER_BYTES} bytes"
            )
        if key not in keys:
            raise StoreError(f"{source}: video {row.path} names episode {key}, which is not stored")


# Columns every figure is computed from: (table, column, smallest allowed value, integers only).
_NUMERIC_COLUMNS = (
    ("storage", "total_bytes", 0, True),
    ("storage", "dense_bank_bytes", 1, True),
    ("storage", "lora_bank_bytes", 1, True),
    ("storage", "parameters", 0, True),
    ("episodes", "steps", 0, True),
    ("episodes", "episode_index", 0, True),
    ("episodes", "wall_s", 0, False),
    ("episodes", "routing_s", 0, False),
    ("videos", "frames", 1, True),
    ("videos", "width", 1, True),
    ("videos", "height", 1, True),
    ("videos", "bytes", 0, True),
    ("videos", "fps", 0, False),
)


def _check_numbers(frames: dict[str, pd.DataFrame], source: str) -> None:
    """Finite, in range, integral where counted: a CHECK constraint does not stop ``inf`` or a tamperer."""
    import math
    import numbers

    for table, column, smallest, integral in _NUMERIC_COLUMNS:
        for value in frames[table][column].dropna():
            number = float(value) if isinstance(value, numbers.Real) else math.nan
            if not (math.isfinite(number) and number >= smallest and (not integral or number.is_integer())):
                kind = "integers" if integral else "finite numbers"
                raise StoreError(
                    f"{source}: column {table}.{column} holds {value}; expected {kind} >= {smallest}"
                )


def _check_values(runs: pd.DataFrame, episodes: pd.DataFrame, source: str) -> None:
    bad_runs = runs[~runs["protocol"].isin(PROTOCOLS) | ~runs["routing_mode"].isin(ROUTING_MODES)]
    if len(bad_runs):
        raise StoreError(
            f"{source}: run {bad_runs['run_id'].iloc[0]} has an unknown protocol or routing mode"
        )
    if not episodes["success"].isin([0, 1]).all():
        raise StoreError(f"{source}: column episodes.success holds values other than 0 and 1")
    skills = runs.set_index("run_id")["skills"]
    for run_id, group in episodes.groupby("run_id"):
        known = set(skills[run_id])
        if not set(group["skill"]) <= known:
            raise StoreError(
                f"{source}: run {run_id} has episodes of skills {sorted(set(group['skill']) - known)}"
            )
        if group["admission_step"].max() > len(known) or group["admission_step"].min() < 1:
            raise StoreError(f"{source}: run {run_id} has admission steps outside 1..{len(known)}")


def _check_entries(runs: pd.DataFrame) -> None:
    """Runs pooled into one leaderboard entry (seeds) must share their evaluation settings."""
    from vlamergebench.eval.metrics import ENTRY_COLUMNS

    for key, group in runs.groupby(list(ENTRY_COLUMNS)):
        if group["settings_json"].nunique() > 1:
            detail = "; ".join(f"{r.run_id} ({r.source}): {r.settings_json}" for r in group.itertuples())
            raise StoreError(
                f"runs of entry {key} differ in evaluation settings and cannot be pooled: {detail}"
            )


def load_results(sources: Sequence[str | os.PathLike[str]]) -> Results:
    """Open every source read-only, validate it and concatenate the rows.

    Raises:
        StoreError: a source is not a results store, is inconsistent, or shares a run with another source.
        BundleError: a bundle fails validation.
        ExportError: a Parquet export fails validation.
    """
    import pandas as pd

    if not sources:
        raise ValueError("load_results: give at least one store, run directory or bundle")
    parts, seen_runs = [], {}
    for source in sources:
        path, name = Path(source), str(source)
        if is_bundle(path):
            with open_bundle(path) as (_, store_file):
                frames = _read_store(store_file, name, None)
        elif is_export(path):
            with open_export(path) as store_file:
                frames = _read_store(store_file, name, path)
        else:
            frames = _read_store(path, name, resolve_store_path(path).parent)
        _check_values(frames[0], frames[1], name)
        _check_numbers({"episodes": frames[1], "storage": frames[2], "videos": frames[3]}, name)
        for run_id in frames[0]["run_id"]:
            if run_id in seen_runs:
                raise StoreError(
                    f"run {run_id} is in both {seen_runs[run_id]} and {name}; give each run once"
                )
            seen_runs[run_id] = name
        parts.append(frames)
    runs, episodes, storage = (pd.concat([part[i] for part in parts], ignore_index=True) for i in range(3))
    # an empty frame (a store without videos) has object columns: leave it out so the dtypes stay the stores'
    recorded = [part[3] for part in parts if len(part[3])] or [parts[0][3]]
    videos = pd.concat(recorded, ignore_index=True)
    _check_entries(runs)
    lost = episodes["error"].map(is_infrastructure_error).astype(bool)
    return Results(
        runs=runs,
        episodes=episodes[~lost].reset_index(drop=True),
        storage=storage,
        sources=tuple(str(s) for s in sources),
        infrastructure_errors=episodes[lost].reset_index(drop=True),
        videos=videos,
    )
