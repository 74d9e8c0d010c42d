"""The acceptance measurement of an expert set counts its own run, never earlier builds' runs in its store."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinyexperts import make_expert_set

from vlamergebench.eval.own_success import success_by_task


def _plant_a_successful_earlier_build(store: Path) -> None:
    """Copy the store's run as another expert set's run whose every episode succeeded (an earlier build)."""
    with sqlite3.connect(store / "results.sqlite") as db:
        for table, changes in (
            ("runs", {"run_id": "'earlier-build'", "expert_set_id": "'another-set'"}),
            ("episodes", {"run_id": "'earlier-build'", "success": "1"}),
        ):
            columns = [row[1] for row in db.execute(f"pragma table_info({table})")]
            values = ", ".join(changes.get(column, column) for column in columns)
            db.execute(f"insert into {table} ({', '.join(columns)}) select {values} from {table}")


def test_success_counts_only_the_run_it_measured(tmp_path):
    pytest.importorskip("libero.libero")
    experts = make_expert_set(tmp_path)
    measure = {"out": tmp_path / "runs", "episodes": 1, "workers": 1, "max_steps": 4, "progress": False}
    first = success_by_task("expert_bank", experts, **measure)
    assert len(first) == 2 and set(first.values()) == {0.0}  # untrained experts, four steps
    _plant_a_successful_earlier_build(tmp_path / "runs" / "expert_bank")
    assert success_by_task("expert_bank", experts, **measure) == first  # resumed: nothing pooled in
