"""``vlamergebench export --format parquet``: results as Parquet files plus a Hugging Face dataset card.

Layout of an export directory (upload it with the Hub's own client, e.g. ``hf upload <you>/<name> <dir>
--repo-type=dataset``; nothing here touches the network)::

    README.md               dataset card: YAML front matter (configs/data_files, license, tags,
                            task_categories, size_categories) and the columns, provenance and command
    data/episodes.parquet   one row per stored episode, with its run's identity columns
    data/runs.parquet       one row per run (method, resolved config, expert set, protocol, routing, seed)
    data/storage.parquet    bytes of each run's inference state per admission step
    data/videos.parquet     one row per recorded rollout video (path, frames, JPEG poster)
    videos/...              the MP4 files the video rows name, where the sources had them

Every table holds the store's rows exactly as stored (one Parquet column per SQLite column, typed from the
store's schema), so reading an export back (:func:`open_export`) rebuilds an identical results store and the
leaderboard built from an export equals the one built from its stores. ``episodes.parquet`` also repeats its
run's identity columns (:data:`RUN_COLUMNS`), so that one file reads on its own on the Hub; reading back
checks they agree with ``runs.parquet``.

Reading an export made by anyone executes nothing: each file must be Parquet of at most
:data:`MAX_TABLE_BYTES`, hold exactly the expected columns (a missing or unknown column is refused, naming
it) of castable types, and its rows go through the store's own constraints (NOT NULL, CHECK, keys) into a
fresh store in a temporary directory; pandas metadata in a file is never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vlamergebench.eval.bundle import is_bundle, open_bundle
from vlamergebench.eval.store import (
    SCHEMA_VERSION,
    STORE_FILE,
    ResultsStore,
    is_video_path,
    resolve_store_path,
    table_columns,
)
from vlamergebench.provenance import git_revision, package_versions

EXPORT_FORMAT = "vlamergebench-parquet-export"
EXPORT_VERSION = 1
FORMATS = ("parquet",)
CARD_FILE = "README.md"
DATA_DIR = "data"
TABLES = ("episodes", "runs", "storage", "videos")
REQUIRED_TABLES = ("episodes", "runs", "storage")  # an export may lack videos.parquet
MAX_TABLE_BYTES = 2 << 30
# Columns of the run repeated in every episode row (not in the store's episodes table).
RUN_COLUMNS = (
    "method",
    "method_config_hash",
    "expert_set_id",
    "protocol",
    "routing_mode",
    "router",
    "run_seed",
)
INSTALL_HINT = "pip install 'vlamergebench[export]' (pyarrow)"

_SQL_TYPES = {"TEXT": "string", "INTEGER": "int64", "REAL": "float64", "BLOB": "binary"}

COLUMN_DESCRIPTIONS: dict[str, dict[str, str]] = {
    "episodes": {
        "run_id": "the run: `<method>-<routing>-<protocol>-<12 hex>`, a hash of every identity field",
        "admission_step": "experts admitted when the episode ran (T, the number of skills, if one-shot)",
        "skill": "the skill (expert) the task belongs to: the true label for routing",
        "suite": "the benchmark suite, e.g. `libero_object`",
        "task": "the task's name within its suite",
        "env_id": "the Gymnasium id of the simulator",
        "env_kwargs_json": "the keyword arguments of `gymnasium.make` (task id, image size, variant), JSON",
        "variant": "the perturbed variant's label, e.g. `camera-L3-s0`; empty for the unperturbed env",
        "perturbation_axis": "the perturbed axis (camera, light, ...); null if unperturbed",
        "perturbation_level": "the perturbation level, as text; null if unperturbed",
        "episode_index": "k, the episode's index within its task (0-based)",
        "init_state_id": "the fixed initial state (LIBERO's init state k for episode k)",
        "seed": "the episode seed, derived from (run seed, skill, episode index)",
        "routed_skill": "the skill whose policy ran (the router's choice; the true skill if oracle)",
        "routing_s": "seconds spent routing",
        "success": "1 if the task succeeded before the step limit, else 0",
        "steps": "primitive environment steps taken",
        "wall_s": "seconds from reset to the end of the episode, policy time included",
        "error": "a simulator fault that ended the episode (`infrastructure: ...`: lost, in no rate)",
        "instruction": "the language instruction the policy was given",
        "versions_json": "package versions of the process that ran the episode, JSON",
        "git_rev": "vlamergebench's git revision (`+dirty` when modified)",
        "worker_pid": "the process id of the worker that ran the episode",
        "finished_at": "when the episode finished (UTC, ISO 8601)",
        "method": "the merge method (repeated from runs)",
        "method_config_hash": "hash of the method's resolved config (repeated from runs)",
        "expert_set_id": "content id of the expert set that was merged (repeated from runs)",
        "protocol": "`one_shot` or `continual` (repeated from runs)",
        "routing_mode": "`oracle`, `method` (the method's own router) or `named` (repeated from runs)",
        "router": "the router's name; null under oracle routing (repeated from runs)",
        "run_seed": "the run seed (repeated from runs)",
    },
    "runs": {
        "run_id": "the run's id (see episodes)",
        "method": "the merge method's registered name (or the evaluated subject's name)",
        "method_config_json": "the method's resolved config, defaults written out, JSON",
        "method_config_hash": "hash of `method_config_json`",
        "expert_set_id": "content id of the expert set",
        "skills_json": "skill names in admission order, JSON",
        "protocol": "`one_shot` or `continual`",
        "routing_mode": "`oracle`, `method` or `named`",
        "router": "the router's name; null under oracle routing",
        "run_seed": "the seed every episode seed derives from",
        "settings_json": "evaluation settings that change outcomes (step cap, image size, device), JSON",
        "created_at": "when the run was first registered (UTC, ISO 8601)",
    },
    "storage": {
        "run_id": "the run's id",
        "admission_step": "experts admitted",
        "total_bytes": "bytes needed to run every skill at inference",
        "dense_bank_bytes": "reference: bytes of T whole dense policies",
        "lora_bank_bytes": "reference: bytes of the base plus T LoRA experts",
        "parameters": "stored parameter count, where the method reports it",
        "breakdown_json": "component name -> bytes, JSON",
    },
    "videos": {
        "run_id": "the episode's run",
        "admission_step": "the episode's admission step",
        "skill": "the episode's skill",
        "env_id": "the episode's simulator id",
        "variant": "the episode's variant (empty: unperturbed)",
        "task": "the episode's task",
        "episode_index": "the episode's index",
        "path": "the MP4 file, relative to this directory",
        "frames": "frames: one per observation the policy read (the first, then one per action chunk)",
        "fps": "playback frames per second",
        "width": "frame width in pixels (the cameras side by side)",
        "height": "frame height in pixels",
        "cameras": "the observation keys shown, left to right",
        "bytes": "size of the MP4 file",
        "sha256": "SHA-256 of the MP4 file",
        "poster_jpeg": "a JPEG thumbnail of the last frame",
    },
}

TABLE_DESCRIPTIONS = {
    "episodes": "one row per episode: which run, task, init state and seed, and whether it succeeded",
    "runs": "one row per run: method, resolved config, expert set, protocol, routing, seed, settings",
    "storage": "bytes of each run's inference state after each admission step",
    "videos": "one row per recorded rollout video (`run --record-videos N`), naming its MP4 file",
}


class ExportError(ValueError):
    """An export cannot be written or read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class ExportSummary:
    """What an export holds."""

    out: Path
    rows: dict[str, int]
    videos_copied: int
    videos_missing: int


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(f"Parquet export needs pyarrow: {INSTALL_HINT}") from None
    return pq


def _arrow_schema(table: str) -> Any:
    """The Arrow schema of ``table``'s Parquet file: the store's columns (and the run's, for episodes)."""
    import pyarrow as pa

    columns = {name: (sql, not_null) for name, sql, not_null in table_columns()[table]}
    if table == "episodes":
        runs = {name: spec for name, *spec in table_columns()["runs"]}
        columns.update({name: tuple(runs[name]) for name in RUN_COLUMNS})
    fields = [
        pa.field(name, _SQL_TYPES[sql], nullable=not not_null) for name, (sql, not_null) in columns.items()
    ]
    meta = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "table": table,
            "store_schema_version": SCHEMA_VERSION}  # fmt: skip
    return pa.schema(fields, metadata={"vlamergebench": json.dumps(meta, sort_keys=True)})


@dataclass
class _SourceRows:
    name: str
    store_sha256: str
    video_root: Path | None  # where the source's video files are (None: a bundle carries none)
    tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_source(source: str | os.PathLike[str]) -> _SourceRows:
    path = Path(source)

    def rows(store_file: Path, video_root: Path | None) -> _SourceRows:
        with ResultsStore.open(store_file, readonly=True) as store:
            tables = {table: store.table_rows(table) for table in ("runs", "episodes", "storage", "videos")}
        return _SourceRows(str(source), _sha256(store_file), video_root, tables)

    if is_bundle(path):
        with open_bundle(path) as (_, store_file):
            return rows(store_file, None)
    if is_export(path):
        with open_export(path) as store_file:
            return rows(store_file, path)
    store_file = resolve_store_path(path)
    return rows(store_file, store_file.parent)


def _episode_table(source: _SourceRows) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The episodes rows with the run's identity columns appended."""
    run_columns, runs = source.tables["runs"]
    identity = {row[0]: tuple(row[run_columns.index(name)] for name in RUN_COLUMNS) for row in runs}
    columns, episodes = source.tables["episodes"]
    return [*columns, *RUN_COLUMNS], [(*row, *identity[row[0]]) for row in episodes]


def _write_table(path: Path, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    import pyarrow as pa

    pq = _pyarrow()
    schema = _arrow_schema(table)
    if columns != schema.names:
        raise ExportError(f"{table}: columns {columns} differ from the schema's {schema.names}")
    data = {name: [row[i] for row in rows] for i, name in enumerate(columns)}
    pq.write_table(pa.Table.from_pydict(data, schema=schema), path, compression="zstd")


def export_parquet(
    sources: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    command: str | None = None,
    license_id: str = "cc-by-4.0",
    copy_videos: bool = True,
) -> ExportSummary:
    """Write the results of ``sources`` (stores, run directories, bundles, exports) as an export at ``out``.

    The sources are validated as the leaderboard reads them (:func:`~vlamergebench.eval.results.load_results`)
    before anything is written; ``out`` must not exist, and appears only when complete.

    Args:
        sources: What to export; a run may come from one source only.
        out: The export directory to create.
        command: The command line that made the export, recorded in the card (default: this process's).
        license_id: The data's license, as a Hub license id (``cc-by-4.0``, ``mit``, ...).
        copy_videos: Copy the MP4 files the video rows name (where the sources have them).
    """
    from vlamergebench.eval.results import load_results

    _pyarrow()
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out}: already exists; export writes a new directory")
    if not license_id or not all(c.isalnum() or c in "-._" for c in license_id):
        raise ExportError(f"--license {license_id!r}: expected a license id such as cc-by-4.0 or mit")
    load_results(sources)  # every check the leaderboard makes, before anything is written
    read = [_read_source(source) for source in sources]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")  # mkdir, not mkdtemp: the umask's modes
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        (staging / DATA_DIR).mkdir()
        counts = {}
        for table in TABLES:
            parts = [_episode_table(s) if table == "episodes" else s.tables[table] for s in read]
            columns = parts[0][0]
            rows = [row for _, part_rows in parts for row in part_rows]
            _write_table(staging / DATA_DIR / f"{table}.parquet", table, columns, rows)
            counts[table] = len(rows)
        copied = missing = 0
        for source in read:
            columns, rows = source.tables["videos"]
            for row in rows:
                relative = row[columns.index("path")]
                origin = None if source.video_root is None else source.video_root / relative
                if copy_videos and origin is not None and origin.is_file():
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(origin, staging / relative)
                    copied += 1
                else:
                    missing += 1
        card = dataset_card(read, counts, copied, command or shlex.join(["vlamergebench", *sys.argv[1:]]),
                            license_id)  # fmt: skip
        (staging / CARD_FILE).write_text(card, encoding="utf-8")
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportSummary(out, counts, copied, missing)


def _size_category(episodes: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M")):  # fmt: skip
        if episodes < limit:
            return label
    return "1M<n<10M"


def _cell(value: Any) -> str:
    """A Markdown table cell: one line, pipes escaped (names come from anyone's bundle)."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("<", "&lt;")


def dataset_card(
    sources: Sequence[_SourceRows], counts: dict[str, int], videos_copied: int, command: str, license_id: str
) -> str:
    """The ``README.md``: Hub YAML front matter, then the description rendered from ``dataset_card.md``."""
    import jinja2
    import yaml

    runs = []
    for source in sources:
        columns, rows = source.tables["runs"]
        episode_runs = [row[0] for row in source.tables["episodes"][1]]
        for row in rows:
            run = dict(zip(columns, row, strict=True))
            runs.append({**run, "episodes": episode_runs.count(run["run_id"])})
    methods = sorted({run["method"] for run in runs})
    front = {
        "pretty_name": "vlamergebench results" + (f": {', '.join(methods)}" if len(methods) <= 4 else ""),
        "license": license_id,
        "task_categories": ["robotics"],
        "tags": [
            "vlamergebench",
            "model-merging",
            "vision-language-action",
            "robotics",
            "libero",
            "leaderboard",
        ],
        "size_categories": [_size_category(counts["episodes"])],
        "configs": [
            {
                "config_name": table,
                "data_files": [{"split": "train", "path": f"{DATA_DIR}/{table}.parquet"}],
                **({"default": True} if table == "episodes" else {}),
            }  # fmt: skip
            for table in TABLES
        ],
    }
    versions = package_versions()
    template = jinja2.Template(
        resources.files(__package__).joinpath("dataset_card.md").read_text(encoding="utf-8"),
        autoescape=False,  # Markdown, not HTML: cells are escaped by ``cell``
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    body = template.render(
        cell=_cell,
        tables=[
            {
                "name": t,
                "rows": counts[t],
                "what": TABLE_DESCRIPTIONS[t],
                "file": f"{DATA_DIR}/{t}.parquet",
                "columns": [
                    (name, str(field.type), COLUMN_DESCRIPTIONS[t][name])
                    for name, field in zip(_arrow_schema(t).names, _arrow_schema(t), strict=True)
                ],
            }  # fmt: skip
            for t in TABLES
        ],
        runs=runs,
        sources=sources,
        videos=counts["videos"],
        videos_copied=videos_copied,
        command=command,
        vlamergebench=versions["vlamergebench"],
        git_rev=git_revision(),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        store_schema_version=SCHEMA_VERSION,
        recorded_versions=sorted(
            {
                row[columns.index("versions_json")]
                for s in sources
                for columns, rows in [s.tables["episodes"]]
                for row in rows
            }
        ),  # fmt: skip
    )
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + body


# --- reading an export back ----------------------------------------------------------------------------
def is_export(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like an export (a directory with ``data/runs.parquet``)."""
    return (Path(path) / DATA_DIR / "runs.parquet").is_file()


def _read_table(path: Path, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """The rows of one Parquet file, checked against the table's columns and types."""
    import pyarrow as pa

    pq = _pyarrow()
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise ExportError(f"{path}: larger than the {MAX_TABLE_BYTES} bytes an export table may hold")
    try:
        data = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise ExportError(f"{path}: not a readable Parquet file ({error})") from None
    expected = _arrow_schema(table)
    missing = [name for name in expected.names if name not in data.column_names]
    extra = [name for name in data.column_names if name not in expected.names]
    if missing or extra:
        found = f"missing columns {missing}" if missing else ""
        found += ("; " if missing and extra else "") + (f"unknown columns {extra}" if extra else "")
        raise ExportError(f"{path}: {found}; expected the {len(expected.names)} columns of the {table} table")
    columns = []
    for field in expected:
        column = data.column(field.name)
        try:
            columns.append(column.cast(field.type).to_pylist())
        except (pa.ArrowException, ValueError) as error:
            raise ExportError(
                f"{path}: column {field.name} is {column.type}, expected {field.type} ({error})"
            ) from None
    return list(expected.names), list(zip(*columns, strict=True)) if columns else []


def _check_run_columns(path: Path, episodes: tuple[list[str], list[tuple[Any, ...]]],
                       runs: tuple[list[str], list[tuple[Any, ...]]]) -> None:  # fmt: skip
    run_columns, run_rows = runs
    identity = {row[0]: tuple(row[run_columns.index(name)] for name in RUN_COLUMNS) for row in run_rows}
    columns, rows = episodes
    where = [columns.index(name) for name in RUN_COLUMNS]
    for row in rows:
        mine = tuple(row[i] for i in where)
        if row[0] in identity and mine != identity[row[0]]:
            differing = [n for n, a, b in zip(RUN_COLUMNS, mine, identity[row[0]], strict=True) if a != b]
            raise ExportError(
                f"{path}: episodes of run {row[0]} give {differing} other than runs.parquet does"
            )


@contextmanager
def open_export(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Validate the export at ``path`` and yield a results store rebuilt from it (lives until exit).

    Raises:
        ExportError: a file is missing, not Parquet, of other columns or types, or breaks a constraint.
    """
    path = Path(path)
    data = path / DATA_DIR
    for table in REQUIRED_TABLES:
        if not (data / f"{table}.parquet").is_file():
            raise ExportError(f"{path}: no {DATA_DIR}/{table}.parquet; an export holds {list(TABLES)}")
    tables = {t: _read_table(data / f"{t}.parquet", t) for t in TABLES if (data / f"{t}.parquet").is_file()}
    _check_run_columns(data / "episodes.parquet", tables["episodes"], tables["runs"])
    columns, rows = tables["episodes"]
    width = len(columns) - len(RUN_COLUMNS)
    tables["episodes"] = (columns[:width], [row[:width] for row in rows])
    with tempfile.TemporaryDirectory(prefix="export-") as scratch:
        store_file = Path(scratch) / STORE_FILE
        with ResultsStore.open(store_file) as store:
            for table in ("runs", "episodes", "storage", "videos"):
                if table not in tables:
                    continue
                names, table_rows = tables[table]
                if table == "videos":
                    bad = [
                        row[names.index("path")]
                        for row in table_rows
                        if not is_video_path(row[names.index("path")])
                    ]
                    if bad:
                        raise ExportError(
                            f"{data / 'videos.parquet'}: video path {bad[0]!r}; expected videos/.../NAME.mp4"
                        )
                try:
                    store.insert_rows(table, names, table_rows)
                except sqlite3.Error as error:
                    raise ExportError(
                        f"{data / f'{table}.parquet'}: rows break the store's constraints ({error})"
                    ) from None
        yield store_file
