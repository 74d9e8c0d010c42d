"""The embedded results store: one SQLite file per output directory, one row per finished episode.

The store is the only thing leaderboards read, so every row carries what any aggregate needs (the protocol
in docs/leaderboards.md): which run (method, config hash, expert set, protocol, routing, seed), which
admission step, skill, suite, task, env id and perturbation variant, which init state and seed, what the
router chose, whether the episode succeeded, and the provenance of the process that ran it.

Resuming: an episode is identified by :data:`EPISODE_KEY`, the table's primary key, so a rerun that asks for
:meth:`ResultsStore.finished_episodes` skips what is done and an insert of a finished episode is refused by
SQLite itself; nothing can be counted twice. The exception is an infrastructure error (see
:func:`is_infrastructure_error`): such a row is not finished, and the rerun's row replaces it. Rows are
committed one by one in WAL mode, so a killed run loses at most the episodes still in flight.

Rollout videos (``run --record-videos N``): the ``videos`` table has one row per recorded episode, keyed like
``episodes``, naming the MP4 file (relative to the store's directory), its frame count, frame rate, size,
SHA-256 and a small JPEG poster (its last frame), so a page can show a thumbnail wherever the store travels
and link the file where it exists. The row is committed in the same transaction as its episode.

Schema versions: version 1 (no ``videos`` table) is still read; opening a version-1 store writable adds the
table and makes it version 2, the tables of version 1 untouched.

Reading untrusted stores (bundles from others): :meth:`ResultsStore.open` with ``readonly=True`` opens the
file read-only, turns off ``trusted_schema`` and refuses any file whose schema (every table, index, view and
trigger in ``sqlite_master``) differs from the one this module creates, so no view or trigger of someone
else's making can run. It writes nothing into or beside the file: a finished store copied alone (without its
``-wal`` file) into a read-only directory reads as it is (``_readonly_uri``).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlamergebench.provenance import canonical_json, config_hash

if TYPE_CHECKING:
    import pandas as pd

SCHEMA_VERSION = 2
# Versions this module reads; an older one is upgraded in place when opened writable (_MIGRATIONS).
READABLE_VERSIONS = (1, 2)
STORE_FILE = "results.sqlite"
PROTOCOLS = ("one_shot", "continual")
# oracle: the true skill is given; method: the merge method's own router; named: a router from the registry.
ROUTING_MODES = ("oracle", "method", "named")
EPISODE_KEY = ("run_id", "admission_step", "skill", "env_id", "variant", "task", "episode_index")
# An episode lost to the infrastructure (its worker process died: the OOM killer, a segfault) says nothing
# about the policy: its row's error starts with this, it is left out of every rate and rerun on resume.
# (Stores written before the prefix existed name such episodes "worker process <pid> died ...".)
INFRASTRUCTURE_ERROR = "infrastructure: "


def _infrastructure_sql(column: str) -> str:
    patterns = f"{column} LIKE 'infrastructure: %' OR {column} LIKE 'worker process % died %'"
    return f"({column} IS NOT NULL AND ({patterns}))"  # NOT of a NULL comparison would drop healthy rows


_SCHEMA = """
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY NOT NULL,
    method TEXT NOT NULL,
    method_config_json TEXT NOT NULL,
    method_config_hash TEXT NOT NULL,
    expert_set_id TEXT NOT NULL,
    skills_json TEXT NOT NULL,
    protocol TEXT NOT NULL CHECK (protocol IN ('one_shot', 'continual')),
    routing_mode TEXT NOT NULL CHECK (routing_mode IN ('oracle', 'method', 'named')),
    router TEXT,
    run_seed INTEGER NOT NULL,
    settings_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE episodes (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    admission_step INTEGER NOT NULL CHECK (admission_step >= 1),
    skill TEXT NOT NULL,
    suite TEXT NOT NULL,
    task TEXT NOT NULL,
    env_id TEXT NOT NULL,
    env_kwargs_json TEXT NOT NULL,
    variant TEXT NOT NULL,
    perturbation_axis TEXT,
    perturbation_level TEXT,
    episode_index INTEGER NOT NULL CHECK (episode_index >= 0),
    init_state_id INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    routed_skill TEXT,
    routing_s REAL NOT NULL,
    success INTEGER NOT NULL CHECK (success IN (0, 1)),
    steps INTEGER NOT NULL CHECK (steps >= 0),
    wall_s REAL NOT NULL,
    error TEXT,
    instruction TEXT,
    versions_json TEXT NOT NULL,
    git_rev TEXT NOT NULL,
    worker_pid INTEGER NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (run_id, admission_step, skill, env_id, variant, task, episode_index)
);
CREATE TABLE storage (
    run_id TEXT NOT NULL REFERENCES runs (run_id),
    admission_step INTEGER NOT NULL CHECK (admission_step >= 1),
    total_bytes INTEGER NOT NULL CHECK (total_bytes >= 0),
    dense_bank_bytes INTEGER NOT NULL CHECK (dense_bank_bytes > 0),
    lora_bank_bytes INTEGER NOT NULL CHECK (lora_bank_bytes > 0),
    parameters INTEGER,
    breakdown_json TEXT NOT NULL,
    PRIMARY KEY (run_id, admission_step)
);
"""
_EPISODE_KEY_SQL = "run_id, admission_step, skill, env_id, variant, task, episode_index"
# Version 2: rollout videos. The poster is a JPEG of the last frame (a thumbnail that travels with the store).
_VIDEOS_SCHEMA = f"""
CREATE TABLE videos (
    run_id TEXT NOT NULL,
    admission_step INTEGER NOT NULL,
    skill TEXT NOT NULL,
    env_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    task TEXT NOT NULL,
    episode_index INTEGER NOT NULL,
    path TEXT NOT NULL,
    frames INTEGER NOT NULL CHECK (frames >= 1),
    fps REAL NOT NULL CHECK (fps > 0),
    width INTEGER NOT NULL CHECK (width >= 1),
    height INTEGER NOT NULL CHECK (height >= 1),
    cameras TEXT NOT NULL,
    bytes INTEGER NOT NULL CHECK (bytes >= 0),
    sha256 TEXT NOT NULL,
    poster_jpeg BLOB NOT NULL,
    PRIMARY KEY ({_EPISODE_KEY_SQL}),
    FOREIGN KEY ({_EPISODE_KEY_SQL}) REFERENCES episodes ({_EPISODE_KEY_SQL})
);
"""
# The statements that make each version from the one before it.
_MIGRATIONS = {2: _VIDEOS_SCHEMA}


def is_infrastructure_error(error: object) -> bool:
    """Whether a stored ``error`` is an infrastructure fault (a dead worker), not the policy's failure."""
    return isinstance(error, str) and (
        error.startswith(INFRASTRUCTURE_ERROR) or (error.startswith("worker process ") and " died " in error)
    )


_TABLES = ("runs", "episodes", "storage", "videos")
# The tables each schema version has.
_VERSION_TABLES = {1: ("runs", "episodes", "storage"), 2: _TABLES}


class StoreError(ValueError):
    """A results store is missing, of another schema, or contradicts what is being written into it."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class RunRecord:
    """What identifies a run; rerunning with the same record resumes it.

    Build with :meth:`create`, which derives ``run_id`` from every field, so two runs differing in any of
    them (method config, expert set, protocol, routing, seed) never share episodes. Episodes per task and
    the task selection are deliberately not part of the identity: rerunning with more episodes extends a run.

    Attributes:
        run_id: ``<method>-<routing>-<protocol>-<12 hex>``.
        method: Registered merge-method name.
        method_config: The method's resolved config, defaults written out.
        expert_set_id: The expert set's content id (``ExpertSet.id``).
        skills: Skill names in admission order.
        protocol: ``one_shot`` or ``continual``.
        routing_mode: One of :data:`ROUTING_MODES`.
        router: The router's name (None for ``oracle``).
        run_seed: The seed every episode seed derives from.
        settings: Evaluation settings that change outcomes and are not in the env id (e.g. a step cap, the
            camera resolution); runs differing in them are different runs.
    """

    run_id: str
    method: str
    method_config: Mapping[str, Any]
    expert_set_id: str
    skills: tuple[str, ...]
    protocol: str
    routing_mode: str
    router: str | None
    run_seed: int
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise StoreError(f"run {self.run_id}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.routing_mode not in ROUTING_MODES:
            raise StoreError(
                f"run {self.run_id}: routing_mode must be one of {ROUTING_MODES}, got {self.routing_mode!r}"
            )
        if (self.routing_mode == "oracle") != (self.router is None):
            raise StoreError(f"run {self.run_id}: a router name is needed exactly when routing is not oracle")
        if not self.skills or len(set(self.skills)) != len(self.skills):
            raise StoreError(
                f"run {self.run_id}: skills must be a non-empty list of unique names: {self.skills}"
            )

    @classmethod
    def create(
        cls,
        *,
        method: str,
        method_config: Mapping[str, Any],
        expert_set_id: str,
        skills: Sequence[str],
        protocol: str,
        routing_mode: str,
        router: str | None,
        run_seed: int,
        settings: Mapping[str, Any] | None = None,
    ) -> RunRecord:
        """Build a record whose ``run_id`` hashes all other fields."""
        identity = {
            "method": method,
            "method_config_hash": config_hash(method_config),
            "expert_set_id": expert_set_id,
            "skills": list(skills),
            "protocol": protocol,
            "routing_mode": routing_mode,
            "router": router,
            "run_seed": int(run_seed),
            "settings": dict(settings or {}),
        }
        routing_tag = routing_mode if router is None else f"{routing_mode}:{router}"
        run_id = f"{method}-{routing_tag}-{protocol}-{config_hash(identity)[:12]}"
        return cls(
            run_id=run_id,
            method=method,
            method_config=dict(method_config),
            expert_set_id=expert_set_id,
            skills=tuple(skills),
            protocol=protocol,
            routing_mode=routing_mode,
            router=router,
            run_seed=int(run_seed),
            settings=dict(settings or {}),
        )

    @property
    def method_config_hash(self) -> str:
        """Hash of the resolved method config."""
        return config_hash(self.method_config)


@dataclass(frozen=True)
class EpisodeRecord:
    """One finished episode, as stored (columns of the ``episodes`` table; see the module docstring)."""

    run_id: str
    admission_step: int
    skill: str
    suite: str
    task: str
    env_id: str
    episode_index: int
    init_state_id: int
    seed: int
    success: bool
    steps: int
    wall_s: float
    versions: Mapping[str, str]
    git_rev: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    variant: str = ""
    perturbation_axis: str | None = None
    perturbation_level: str | None = None
    routed_skill: str | None = None
    routing_s: float = 0.0
    error: str | None = None
    instruction: str | None = None
    worker_pid: int = 0
    # Not a column: the episode's encoded rollout video on its way from the worker to the runner, which
    # writes the file and the ``videos`` row (``run --record-videos``).
    # an eval.video.EncodedVideo, named and not imported: video imports this module
    video: Any = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> tuple[Any, ...]:
        """The episode's identity, in the order of :data:`EPISODE_KEY`."""
        return tuple(getattr(self, name) for name in EPISODE_KEY)


@dataclass(frozen=True)
class StorageRecord:
    """Bytes on disk of a method's inference state after ``admission_step`` admissions (docs/leaderboards.md).

    Attributes:
        run_id: The run it belongs to.
        admission_step: Experts admitted (T for one-shot).
        total_bytes: Everything needed to run every skill at inference.
        dense_bank_bytes: The reference: T whole dense policies.
        lora_bank_bytes: The reference: base + T x (LoRA factors + action expert + small parts).
        parameters: Stored parameter count, if the method reports it.
        breakdown: Component name -> bytes (base, shared tensors, masks, heads, routers, ...).
    """

    run_id: str
    admission_step: int
    total_bytes: int
    dense_bank_bytes: int
    lora_bank_bytes: int
    parameters: int | None = None
    breakdown: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VideoRecord:
    """A recorded rollout video of one stored episode (a row of the ``videos`` table).

    Attributes:
        key: The episode's key, in :data:`EPISODE_KEY` order.
        path: The MP4 file, relative to the store's directory (``videos/...``).
        frames: Frames in the file.
        fps: Playback frame rate.
        width: Frame width in pixels (cameras side by side).
        height: Frame height in pixels.
        cameras: The observation keys shown, left to right, comma-separated.
        bytes: Size of the MP4 file.
        sha256: SHA-256 of the MP4 file.
        poster_jpeg: A JPEG of the last frame.
    """

    key: tuple[Any, ...]
    path: str
    frames: int
    fps: float
    width: int
    height: int
    cameras: str
    bytes: int
    sha256: str
    poster_jpeg: bytes

    def row(self) -> tuple[Any, ...]:
        """The row's values in the table's column order."""
        return (*self.key, self.path, int(self.frames), float(self.fps), int(self.width), int(self.height),
                self.cameras, int(self.bytes), self.sha256, bytes(self.poster_jpeg))  # fmt: skip


VIDEO_COLUMNS = (*EPISODE_KEY, "path", "frames", "fps", "width", "height", "cameras", "bytes", "sha256",
                 "poster_jpeg")  # fmt: skip


_VIDEO_PATH = re.compile(r"videos(/[A-Za-z0-9_.-]+)+\.mp4")


def is_video_path(path: object) -> bool:
    """Whether ``path`` is a video path as this module writes them: ``videos/.../<name>.mp4``, no ``..``.

    Paths come from stores others made: anything else is refused before it is joined to a directory.
    """
    return (
        isinstance(path, str)
        and _VIDEO_PATH.fullmatch(path) is not None
        and not {".", ".."} & set(path.split("/"))
    )


def _expected_schema(version: int = SCHEMA_VERSION) -> set[tuple[str, str, str]]:
    memory = sqlite3.connect(":memory:")
    try:
        memory.executescript(_SCHEMA)
        for step in range(2, version + 1):
            memory.executescript(_MIGRATIONS[step])
        return set(memory.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master"))
    finally:
        memory.close()


def table_columns() -> dict[str, list[tuple[str, str, bool]]]:
    """Every table of the current schema: ``[(column, SQLite type, NOT NULL), ...]`` in column order."""
    memory = sqlite3.connect(":memory:")
    try:
        memory.executescript(_SCHEMA + "".join(_MIGRATIONS[step] for step in range(2, SCHEMA_VERSION + 1)))
        return {
            table: [(row[1], row[2], bool(row[3])) for row in memory.execute(f"PRAGMA table_info({table})")]
            for table in _TABLES
        }
    finally:
        memory.close()


def resolve_store_path(path: str | os.PathLike[str]) -> Path:
    """``<dir>/results.sqlite`` for a directory (existing or to be made), else the path itself."""
    path = Path(path)
    return path if path.suffix in (".sqlite", ".db") else path / STORE_FILE


def _switch_to_wal(db: sqlite3.Connection, deadline: float) -> None:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the lock.

    SQLite answers a journal-mode switch that meets a concurrent opener with "database is locked" at once,
    without its busy timeout (seen with 12 processes creating one store on a loaded machine).
    """
    delay = 0.01
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


SQLITE_HEADER = b"SQLite format 3\x00"


def _header(path: Path) -> bytes:
    """The first 100 bytes of ``path`` (SQLite's database header), or fewer; empty if unreadable."""
    try:
        with path.open("rb") as file:
            return file.read(100)
    except OSError:
        return b""


def _copied_without_wal(path: Path) -> bool:
    """Whether ``path`` is a WAL-mode database with no ``-wal`` file beside it.

    Header bytes 18 and 19 are 2 in WAL mode. A live WAL connection keeps its ``-wal`` file; the last one to
    close folds it into the database and removes it, so such a file is either finished or a partial copy.
    """
    header = _header(path)
    return header[18:20] == b"\x02\x02" and not path.with_name(path.name + "-wal").exists()


def _readonly_uri(path: Path) -> str:
    """An SQLite URI that reads ``path`` without writing anything, next to it or into it.

    ``mode=ro`` alone still creates ``-wal`` and ``-shm`` files beside a WAL-mode database, which fails in a
    read-only directory (a copy on read-only media or in a colleague's folder). ``immutable=1`` promises
    SQLite that nobody changes the file, so it takes no locks and makes no side files: true when the
    directory is not writable, and when a WAL-mode store has no ``-wal`` file (no writer is live). A store
    being written keeps the plain read-only open, which sees every row its writer has committed.
    """
    immutable = not os.access(path.parent, os.W_OK) or _copied_without_wal(path)
    return f"{path.resolve().as_uri()}?mode=ro" + ("&immutable=1" if immutable else "")


def _unreadable(path: Path, error: sqlite3.DatabaseError, readonly: bool) -> StoreError:
    """One line saying why SQLite could not read ``path``: not SQLite at all, or what SQLite said."""
    header = _header(path)
    if not header.startswith(SQLITE_HEADER):
        found = "an empty file" if not header else f"a file starting {header[:16]!r}"
        return StoreError(f"{path}: not an SQLite results store: {found}, expected an SQLite database")
    wal = path.with_name(path.name + "-wal")
    side = f"; its {wal.name} file may need a writable directory: copy both to one" if wal.exists() else ""
    how = "read-only" if readonly else "for writing"
    return StoreError(f"{path}: an SQLite file that SQLite cannot open {how} ({error}){side}")


class ResultsStore:
    """A results store file; use as a context manager or call :meth:`close`."""

    def __init__(self, connection: sqlite3.Connection, path: Path, readonly: bool, version: int) -> None:
        self._db = connection
        self.path = path
        self.readonly = readonly
        self.schema_version = version

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, readonly: bool = False) -> ResultsStore:
        """Open (or, writable, create) the store at ``path`` (a directory or a ``.sqlite`` file).

        Raises:
            StoreError: the file is missing (read-only), is not a store, or has another schema version.
        """
        path = resolve_store_path(path)
        if readonly:
            if not path.is_file():
                raise StoreError(f"{path}: no results store here")
            db = sqlite3.connect(_readonly_uri(path), uri=True, timeout=30)
            db.execute("PRAGMA trusted_schema = OFF")
            db.execute("PRAGMA query_only = ON")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30, isolation_level=None)
            _switch_to_wal(db, deadline=time.monotonic() + 30)
            # NORMAL in WAL mode survives a killed process (the OS has every committed frame); only a power
            # cut may drop the last commits, which a resume then reruns.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute("PRAGMA foreign_keys = ON")
        try:
            version = cls._check_schema(db, path, create=not readonly)
        except BaseException:
            db.close()
            raise
        return cls(db, path, readonly, version)

    @staticmethod
    def _check_schema(db: sqlite3.Connection, path: Path, create: bool) -> int:
        """Check (writable: create or upgrade) the schema; returns the schema version."""
        try:
            # One snapshot for both reads: another process may commit the new schema between them, and a
            # version read before its commit beside the tables read after it looks like schema version 0.
            db.execute("BEGIN")
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                objects = set(db.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master"))
            finally:
                db.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            raise _unreadable(path, error, readonly=not create) from None
        if not objects and not create and _copied_without_wal(path):
            raise StoreError(
                f"{path}: holds no tables: a WAL-mode store copied without its {path.name}-wal file, which "
                f"held its data; copy {path.name}-wal beside it, or copy the store again once the run "
                "writing it has finished (its data is then all in this one file)"
            )
        if not objects and create:
            # Another process may be creating the same store right now: decide under the write lock.
            db.execute("BEGIN IMMEDIATE")
            try:
                if not db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    script = _SCHEMA + "".join(_MIGRATIONS[step] for step in range(2, SCHEMA_VERSION + 1))
                    for statement in filter(str.strip, script.split(";")):
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            version = db.execute("PRAGMA user_version").fetchone()[0]
            objects = set(db.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master"))
        if version not in READABLE_VERSIONS:
            raise StoreError(
                f"{path}: results store schema version {version}, this vlamergebench reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        ResultsStore._check_objects(objects, version, path)
        if create and version < SCHEMA_VERSION:
            ResultsStore._upgrade(db, path)
            version = SCHEMA_VERSION
        return version

    @staticmethod
    def _check_objects(objects: set[tuple[str, str, str]], version: int, path: Path) -> None:
        expected = _expected_schema(version)
        if objects != expected:
            extra = sorted(name for _, name, _ in objects - expected)
            missing = sorted(name for _, name, _ in expected - objects)
            raise StoreError(
                f"{path}: schema differs from version {version}: extra {extra}, missing {missing}"
            )

    @staticmethod
    def _upgrade(db: sqlite3.Connection, path: Path) -> None:
        """Bring an older store to :data:`SCHEMA_VERSION` (under the write lock: others may open it too)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in filter(str.strip, _MIGRATIONS[step].split(";")):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        objects = set(db.execute("SELECT type, name, coalesce(sql, '') FROM sqlite_master"))
        ResultsStore._check_objects(objects, SCHEMA_VERSION, path)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def register_run(self, run: RunRecord) -> None:
        """Insert ``run``; an existing run with the same id must match it field for field."""
        row = (
            run.run_id,
            run.method,
            canonical_json(dict(run.method_config)),
            run.method_config_hash,
            run.expert_set_id,
            canonical_json(list(run.skills)),
            run.protocol,
            run.routing_mode,
            run.router,
            run.run_seed,
            canonical_json(dict(run.settings)),
        )
        query = (
            "SELECT run_id, method, method_config_json, method_config_hash, expert_set_id, skills_json,"
            " protocol, routing_mode, router, run_seed, settings_json FROM runs WHERE run_id = ?"
        )
        existing = self._db.execute(query, (run.run_id,)).fetchone()
        if existing is None:  # another process may register the same run meanwhile: then compare with it
            self._db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (*row, _now()),
            )
            existing = self._db.execute(query, (run.run_id,)).fetchone()
        if tuple(existing) != row:
            raise StoreError(
                f"{self.path}: run {run.run_id} is stored with other settings: {existing} != {row}"
            )

    def finished_episodes(
        self, run_id: str, retry_errors: bool = False
    ) -> dict[tuple[Any, ...], tuple[bool, bool]]:
        """Stored episodes of ``run_id``: key (:data:`EPISODE_KEY` order) -> (success, ended in an error).

        Infrastructure errors are not finished; with ``retry_errors``, no episode that ended in an error is.
        """
        columns = ", ".join(EPISODE_KEY)
        unfinished = "(error IS NOT NULL)" if retry_errors else _infrastructure_sql("error")
        where = f"run_id = ? AND NOT {unfinished}"
        query = f"SELECT {columns}, success, error IS NOT NULL FROM episodes WHERE {where}"
        return {tuple(row[:-2]): (bool(row[-2]), bool(row[-1])) for row in self._db.execute(query, (run_id,))}

    def check_method_code(self, run_id: str, code_version: str) -> None:
        """Refuse to extend run ``run_id`` if its stored episodes came from another method code version."""
        query = "SELECT DISTINCT versions_json FROM episodes WHERE run_id = ?"
        stored = {json.loads(row[0]).get("method_code") for row in self._db.execute(query, (run_id,))}
        other = sorted(str(code) for code in stored - {code_version})
        if other:
            raise StoreError(
                f"{self.path}: run {run_id} holds episodes of method code {', '.join(other)}; this is method "
                f"code {code_version} (the method's source changed): give a new --out so that the two are "
                "never mixed"
            )

    def add_episode(
        self, episode: EpisodeRecord, retry_errors: bool = False, video: VideoRecord | None = None
    ) -> bool:
        """Commit one finished episode (and its video); False (and nothing changed) if it is already stored.

        A stored infrastructure error (with ``retry_errors``: any stored error) is replaced instead, and so is
        the video row of the episode it replaces (dropped when the new episode has none).
        """
        values = {
            **{name: getattr(episode, name) for name in EPISODE_KEY},
            "suite": episode.suite,
            "env_kwargs_json": canonical_json(dict(episode.env_kwargs)),
            "perturbation_axis": episode.perturbation_axis,
            "perturbation_level": episode.perturbation_level,
            "init_state_id": int(episode.init_state_id),
            "seed": int(episode.seed),
            "routed_skill": episode.routed_skill,
            "routing_s": float(episode.routing_s),
            "success": int(bool(episode.success)),
            "steps": int(episode.steps),
            "wall_s": float(episode.wall_s),
            "error": episode.error,
            "instruction": episode.instruction,
            "versions_json": canonical_json(dict(episode.versions)),
            "git_rev": episode.git_rev,
            "worker_pid": int(episode.worker_pid),
            "finished_at": _now(),
        }
        if video is not None and tuple(video.key) != episode.key:
            raise StoreError(
                f"{self.path}: video {video.path} belongs to episode {video.key}, not {episode.key}"
            )
        names = ", ".join(values)
        marks = ", ".join("?" * len(values))
        updates = ", ".join(f"{name} = excluded.{name}" for name in values if name not in EPISODE_KEY)
        column = "episodes.error"
        replaceable = f"{column} IS NOT NULL" if retry_errors else _infrastructure_sql(column)
        self._db.execute("BEGIN IMMEDIATE")  # the episode and its video row commit together
        try:
            cursor = self._db.execute(
                f"INSERT INTO episodes ({names}) VALUES ({marks}) ON CONFLICT ({', '.join(EPISODE_KEY)})"
                f" DO UPDATE SET {updates} WHERE {replaceable}",
                tuple(values.values()),
            )
            stored = cursor.rowcount == 1
            if stored:  # a writable store is always of the latest version
                where = " AND ".join(f"{name} = ?" for name in EPISODE_KEY)
                self._db.execute(f"DELETE FROM videos WHERE {where}", episode.key)
                if video is not None:
                    marks = ", ".join("?" * len(VIDEO_COLUMNS))
                    self._db.execute(
                        f"INSERT INTO videos ({', '.join(VIDEO_COLUMNS)}) VALUES ({marks})", video.row()
                    )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return stored

    def add_storage(self, record: StorageRecord) -> None:
        """Store a run's storage figures; recording them again must give the same numbers."""
        row = (
            record.run_id,
            int(record.admission_step),
            int(record.total_bytes),
            int(record.dense_bank_bytes),
            int(record.lora_bank_bytes),
            None if record.parameters is None else int(record.parameters),
            canonical_json({k: int(v) for k, v in record.breakdown.items()}),
        )
        existing = self._db.execute(
            "SELECT * FROM storage WHERE run_id = ? AND admission_step = ?", row[:2]
        ).fetchone()
        if existing is None:
            self._db.execute("INSERT INTO storage VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        elif tuple(existing) != row:
            raise StoreError(
                f"{self.path}: storage of run {record.run_id} step {record.admission_step} differs "
                f"from the stored figures: {existing} != {row}"
            )

    def runs_frame(self) -> pd.DataFrame:
        """The ``runs`` table, with ``method_config`` and ``skills`` parsed from JSON."""
        frame = self._frame("SELECT * FROM runs ORDER BY run_id")
        frame["skills"] = [tuple(json.loads(text)) for text in frame["skills_json"]]
        return frame

    def episodes_frame(self) -> pd.DataFrame:
        """Every episode joined with its run's identity columns (one row per episode)."""
        return self._frame(
            "SELECT e.*, r.method, r.method_config_hash, r.expert_set_id, r.protocol, r.routing_mode,"
            " r.router, r.run_seed, r.settings_json FROM episodes AS e JOIN runs AS r USING (run_id)"
            " ORDER BY e.run_id, e.admission_step, e.skill, e.env_id, e.variant, e.task, e.episode_index"
        )

    def storage_frame(self) -> pd.DataFrame:
        """The ``storage`` table."""
        return self._frame("SELECT * FROM storage ORDER BY run_id, admission_step")

    def videos_frame(self) -> pd.DataFrame:
        """The ``videos`` table (no rows in a version-1 store), in episode order."""
        import pandas as pd

        if self.schema_version < 2:
            return pd.DataFrame(columns=list(VIDEO_COLUMNS))
        return self._frame(f"SELECT * FROM videos ORDER BY {_EPISODE_KEY_SQL}")

    def _frame(self, query: str) -> pd.DataFrame:
        import pandas as pd

        cursor = self._db.execute(query)
        return pd.DataFrame(cursor.fetchall(), columns=[column[0] for column in cursor.description])

    def copy_to(self, destination: str | os.PathLike[str]) -> Path:
        """Write a consistent single-file snapshot (no WAL) to ``destination`` with SQLite's backup API."""
        destination = Path(destination)
        if destination.exists():
            raise FileExistsError(f"{destination}: already exists")
        target = sqlite3.connect(destination)
        try:
            self._db.backup(target)
            target.execute("PRAGMA journal_mode = DELETE")
        finally:
            target.close()
        return destination

    def table_rows(self, table: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Column names and every row of ``table`` (``runs``, ``episodes`` or ``storage``), as stored."""
        if table not in _TABLES:
            raise StoreError(f"{self.path}: no table {table!r}; tables: {list(_TABLES)}")
        if table not in _VERSION_TABLES[self.schema_version]:
            return list(VIDEO_COLUMNS), []
        cursor = self._db.execute(f"SELECT * FROM {table}")
        return [column[0] for column in cursor.description], cursor.fetchall()

    def insert_rows(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows copied from another store of this schema, in one transaction (a conflict raises)."""
        if table not in _TABLES:
            raise StoreError(f"{self.path}: no table {table!r}; tables: {list(_TABLES)}")
        names, marks = ", ".join(columns), ", ".join("?" * len(columns))
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)

    def check_integrity(self) -> None:
        """Run SQLite's integrity check; a damaged file raises :class:`StoreError`."""
        result = [row[0] for row in self._db.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            raise StoreError(f"{self.path}: integrity check failed: {result[:5]}")
