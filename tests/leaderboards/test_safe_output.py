"""Names from others' stores reach every leaderboard file as plain text: no HTML in Markdown, no formula in a
spreadsheet, no math text in a figure; and a build that fails leaves the previous board as it was."""

from __future__ import annotations

import csv
import re

import pytest
from handmade import make_episodes, make_run

from vlamergebench.eval.store import ResultsStore
from vlamergebench.leaderboards.registry import build_leaderboards

HOSTILE = ("<script>alert(1)</script>", "=HYPERLINK(1)", "+1", "-2+3", "@SUM(A1)", r"$\x$ mathtext")


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile")
    with ResultsStore.open(path) as store:
        for name in HOSTILE:
            run = make_run(name)
            store.register_run(run)
            for skill in ("a1", "a2", "b1"):
                for episode in make_episodes(run, 3, skill, wins=1):
                    store.add_episode(episode)
    return path


def test_hostile_method_names_are_plain_text_in_markdown_csv_and_figures(hostile_store, tmp_path):
    written = build_leaderboards([hostile_store], tmp_path)
    assert (tmp_path / "success.png").stat().st_size > 0  # "$\x$" did not abort the figure
    markdown = (tmp_path / "success.md").read_text()
    assert "<script>" not in markdown and "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    for path in [p for paths in written.values() for p in paths if p.suffix == ".csv"]:
        with path.open(newline="") as handle:
            for row in csv.reader(handle):
                for cell in row:
                    assert not cell.startswith(("=", "+", "@", "\t", "\r")), (path.name, cell)
                    assert not (cell.startswith("-") and not _is_number(cell)), (path.name, cell)
    overall = (tmp_path / "success_overall.csv").read_text()
    assert "'=HYPERLINK(1)" in overall and "'-2+3" in overall


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_a_build_that_fails_on_a_full_disk_leaves_the_previous_board_intact(store_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "board"
    build_leaderboards([store_dir], out)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    # RLIMIT_FSIZE makes every write past 40 kB fail with EFBIG, as a full disk fails with ENOSPC (the limit
    # sits above the 32 KiB shared-memory file SQLite needs to read the store).
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))\n"
        "from vlamergebench.cli import main\n"
        f"sys.exit(main(['leaderboard', {str(store_dir)!r}, '--out', {str(out)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "vlamergebench leaderboard: error:" in done.stderr and "File too large" in done.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ("UPDATE storage SET total_bytes = 1e999", "column storage.total_bytes holds inf"),
        ("UPDATE storage SET dense_bank_bytes = -5", "column storage.dense_bank_bytes holds -5"),
        ("UPDATE storage SET lora_bank_bytes = 2.5", "column storage.lora_bank_bytes holds 2.5"),
        ("UPDATE episodes SET steps = -3 WHERE rowid = 1", "column episodes.steps holds -3"),
        ("UPDATE episodes SET wall_s = 1e999 WHERE rowid = 1", "column episodes.wall_s holds inf"),
        ("UPDATE episodes SET routing_s = -1.0 WHERE rowid = 1", "column episodes.routing_s holds -1.0"),
    ],
)
def test_tampered_storage_and_step_values_are_refused(store_dir, tmp_path, update, message):
    import sqlite3

    from vlamergebench.eval.results import load_results
    from vlamergebench.eval.store import StoreError

    copy = tmp_path / "results.sqlite"
    with ResultsStore.open(store_dir, readonly=True) as store:
        store.copy_to(copy)
    db = sqlite3.connect(copy)
    db.execute("PRAGMA ignore_check_constraints = ON")  # a tamperer's tool does not honour CHECK either
    db.execute(update)
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=re.escape(message)):
        load_results([copy])
