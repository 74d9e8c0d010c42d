"""summary.json: the runs of a store summarised with the board's numbers, checked by the shipped schema."""

from __future__ import annotations

import json

import pytest

from vlamergebench.eval.metrics import wilson_interval
from vlamergebench.eval.summary import summary_schema, validate_summary, write_summary


def test_summary_numbers_and_schema(store_dir, tmp_path):
    path = write_summary(store_dir, tmp_path / "summary.json")
    summary = json.loads(path.read_text())
    assert summary_schema()["$schema"].endswith("2020-12/schema")
    runs = {(r["method"], r["routing_mode"]): r for r in summary["runs"]}
    ties = runs[("ties", "oracle")]
    assert ties["overall"]["success_rate"] == pytest.approx(0.6875) and ties["overall"]["episodes"] == 12
    assert ties["suites"]["A"]["success_rate"] == pytest.approx(0.875)
    a1 = next(t for t in ties["tasks"] if t["task"] == "a1")
    assert (a1["ci95_low"], a1["ci95_high"]) == pytest.approx(wilson_interval(3, 4))
    ta = runs[("ta", "oracle")]
    pooled = next(p for p in ta["perturbations"] if p["aggregate"] == "pooled")
    assert pooled["success_rate"] == 0.25 and pooled["episodes"] == 8
    assert runs[("carve", "oracle")]["episodes"] == 24 and ties["wall_s"] == 12.0
    assert ties["versions"] == [{"mujoco": "3.17.0", "torch": "2.13.0"}]


def test_summary_schema_names_the_bad_field(store_dir):
    from vlamergebench.eval.summary import build_summary

    summary = build_summary(store_dir)
    summary["runs"][0]["overall"]["success_rate"] = 1.5
    with pytest.raises(ValueError, match=r"summary.json: field runs/0/overall.*1.5"):
        validate_summary(summary)
    summary["runs"][0]["overall"]["success_rate"] = 0.5
    summary["runs"][0]["surprise"] = True
    with pytest.raises(ValueError, match=r"field runs/0: Additional properties .*'surprise'"):
        validate_summary(summary)
