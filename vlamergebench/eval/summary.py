"""``summary.json``: one machine-readable summary of every run in a results store, validated by a schema.

Per run: identity (method, resolved config and its hash, expert set, protocol, routing, seed), evaluation
settings, success overall / per suite / per task of the final model with Wilson 95% intervals and episode
counts, perturbation aggregates, episodes, simulator errors, summed episode wall time, and provenance (package
versions, git revisions). The numbers are the leaderboard's (:mod:`vlamergebench.eval.metrics`); the file is
checked against ``summary.schema.json`` (shipped with the package) before it is written.
"""

from __future__ import annotations

import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

from vlamergebench.eval import metrics
from vlamergebench.eval.results import load_results

SUMMARY_FILE = "summary.json"


def summary_schema() -> dict[str, Any]:
    """The JSON schema (2020-12) every ``summary.json`` satisfies."""
    return json.loads(resources.files(__package__).joinpath("summary.schema.json").read_text())


def _rate(row: Any) -> dict[str, Any]:
    return {
        "success_rate": float(row.rate),
        "ci95_low": float(row.ci_low),
        "ci95_high": float(row.ci_high),
        "episodes": int(row.episodes),
    }


def build_summary(store: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary of every run in ``store`` (a run directory, a ``.sqlite`` store or a bundle)."""
    results = load_results([store])
    final = results.final_episodes()
    perturbed = results.final_episodes(perturbed=True)
    runs = []
    for run in results.runs.itertuples():
        mine = final[final["run_id"] == run.run_id]
        everything = results.episodes[results.episodes["run_id"] == run.run_id]
        tasks = metrics.task_table(mine) if len(mine) else None
        overall = metrics.overall_table(tasks) if tasks is not None else None
        suites = metrics.suite_table(tasks) if tasks is not None else None
        shaken = metrics.perturbation_table(perturbed[perturbed["run_id"] == run.run_id])
        runs.append(
            {
                "run_id": run.run_id,
                "method": run.method,
                "method_config": json.loads(run.method_config_json),
                "method_config_hash": run.method_config_hash,
                "expert_set_id": run.expert_set_id,
                "protocol": run.protocol,
                "routing_mode": run.routing_mode,
                "router": run.router or None,
                "run_seed": int(run.run_seed),
                "settings": json.loads(run.settings_json),
                "overall": _rate(next(overall.itertuples())) if overall is not None else None,
                "suites": {r.suite: _rate(r) for r in suites.itertuples()} if suites is not None else {},
                "tasks": [
                    {"suite": r.suite, "task": r.task, **_rate(r)}
                    for r in (tasks.itertuples() if tasks is not None else [])
                ],
                "perturbations": [
                    {"aggregate": r.aggregate, "axis": str(r.axis), "level": str(r.level), **_rate(r)}
                    for r in shaken.itertuples()
                ],
                "episodes": len(everything),
                "errors": int(everything["error"].notna().sum()),
                "wall_s": float(everything["wall_s"].sum()),
                "versions": [json.loads(t) for t in sorted(set(everything["versions_json"]))],
                "git_revisions": sorted(set(everything["git_rev"])),
            }
        )
    return {
        "format": "vlamergebench-summary",
        "format_version": 1,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": runs,
    }


def validate_summary(summary: dict[str, Any], where: str = SUMMARY_FILE) -> None:
    """Raise ``ValueError`` naming the first field that breaks the schema (or a non-finite number)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(summary_schema()).iter_errors(summary)
    )
    if error is not None:
        field = "/".join(str(part) for part in error.absolute_path) or "(top level)"
        raise ValueError(f"{where}: field {field}: {error.message}")
    json.dumps(summary, allow_nan=False)  # NaN or infinity anywhere raises here


def write_summary(store: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Build, validate and write ``summary.json`` for ``store``; returns the path."""
    summary = build_summary(store)
    validate_summary(summary, str(path))
    path = Path(path)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
