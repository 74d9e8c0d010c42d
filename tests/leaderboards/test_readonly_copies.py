"""A results store copied on its own (without its WAL side files) into a read-only directory is read there
without writing anything beside it; a copy that lacks the store's data says so in one line.

Tests run as root, for whom a 0555 directory is still writable, so "read-only" is checked the way a
colleague's read-only folder would show it: the directory holds exactly the copied file afterwards (SQLite's
plain read-only open makes ``-wal`` and ``-shm`` files beside a WAL-mode store, which fails where it may not
write) and the file's bytes are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from handmade import fill_store

from vlamergebench.cli import main
from vlamergebench.eval.store import ResultsStore
from vlamergebench.eval.summary import write_summary


def _copy_alone(store_file: Path, directory: Path) -> Path:
    """Copy only ``store_file`` into ``directory``, then make both read-only (0444 file, 0555 directory)."""
    directory.mkdir()
    copy = Path(shutil.copyfile(store_file, directory / store_file.name))
    copy.chmod(0o444)
    directory.chmod(0o555)
    return copy


@pytest.fixture
def read_only_copy(tmp_path):
    """A finished store (every writer closed, so its data is all in the one file) copied alone."""
    source = tmp_path / "run"
    with ResultsStore.open(source) as store:
        fill_store(store)
    assert sorted(os.listdir(source)) == ["results.sqlite"]  # the last writer folded its WAL in
    copy = _copy_alone(source / "results.sqlite", tmp_path / "readonly")
    yield copy
    copy.parent.chmod(0o755)


def test_a_finished_store_copied_alone_reads_from_a_read_only_directory(read_only_copy, tmp_path, capsys):
    before = hashlib.sha256(read_only_copy.read_bytes()).hexdigest()
    assert read_only_copy.read_bytes()[18:20] == b"\x02\x02"  # still marked WAL mode: the case at issue

    status = main(
        ["leaderboard", str(read_only_copy.parent), "--out", str(tmp_path / "board"), "--only", "success"]
    )
    summary = write_summary(read_only_copy.parent, tmp_path / "summary.json")

    assert status == 0, capsys.readouterr().err
    assert "carve" in (tmp_path / "board" / "success_overall.csv").read_text()
    assert {run["method"] for run in json.loads(summary.read_text())["runs"]} == {
        "ties",
        "carve",
        "ta",
        "base",
    }
    assert sorted(os.listdir(read_only_copy.parent)) == ["results.sqlite"]  # no -wal/-shm made beside it
    assert hashlib.sha256(read_only_copy.read_bytes()).hexdigest() == before


def test_a_copy_taken_while_its_data_was_still_in_the_wal_says_so_in_one_line(tmp_path, capsys):
    source = tmp_path / "live"
    with ResultsStore.open(source) as store:
        fill_store(store)
        assert (source / "results.sqlite-wal").stat().st_size > 0  # the rows are in the WAL file so far
        copy = _copy_alone(source / "results.sqlite", tmp_path / "readonly")
    try:
        status = main(["leaderboard", str(copy), "--out", str(tmp_path / "board"), "--only", "success"])
        error = capsys.readouterr().err.strip()
        assert status == 1
        assert error.splitlines() == [error]
        assert error.startswith(
            f"vlamergebench leaderboard: error: {copy}: holds no tables: a WAL-mode store"
        )
        assert "copied without its results.sqlite-wal file" in error
        assert sorted(os.listdir(copy.parent)) == ["results.sqlite"]
    finally:
        copy.parent.chmod(0o755)
