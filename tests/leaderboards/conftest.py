"""Fixtures: the hand-made results store of handmade.py, and every builder run once over it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handmade import fill_store

from vlamergebench.eval.store import ResultsStore


@pytest.fixture(scope="session")
def store_dir(tmp_path_factory):
    """A run directory holding the results store described above (built once per session)."""
    path = tmp_path_factory.mktemp("results")
    with ResultsStore.open(path) as store:
        fill_store(store)
    return path


@pytest.fixture(scope="session")
def built(store_dir, tmp_path_factory):
    """Every registered builder run once over ``store_dir``: (output dir, {builder: files})."""
    from vlamergebench.leaderboards.registry import build_leaderboards

    out = tmp_path_factory.mktemp("board")
    return out, build_leaderboards([store_dir], out)
