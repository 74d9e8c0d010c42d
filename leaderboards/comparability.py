"""Which entries may be ranked together: each entry's evaluation settings and the board's reference settings.

Bundles come from anyone, so a run capped at a few steps on one task must never be ranked beside a full run.
The settings that change the ranked number form an entry's *comparability key*: the expert set, the tasks
evaluated (suite and task), the episodes per task, the init states, the step cap, the image size and the
render profile (``fast`` renders decimated visual meshes: other pixels than ``full``). The
board's *reference settings* are the key shared by the most entries (ties: the most episodes, then the
earliest label); entries with another key are shown in a separate, labelled table and never ranked.

Shown but not part of the key: perturbed variants (each has its own rows), the run seeds (the paired
statistics match episodes by seed and say how many pairs they found), the policies' device and dtype, and
the package versions.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from vlamergebench.eval.metrics import ENTRY_COLUMNS
from vlamergebench.leaderboards import tables as tb

if TYPE_CHECKING:
    import pandas as pd

    from vlamergebench.eval.results import Results

KEY_COLUMNS = (
    "expert_set_id",
    "tasks_covered",
    "episodes_per_task",
    "init_states",
    "max_steps",
    "image_size",
    "render_profile",
)


def compact_ranges(values: Any) -> str:
    """``[0, 1, 2, 4]`` -> ``"0-2, 4"`` (sorted, unique)."""
    numbers = sorted({int(v) for v in values})
    parts, start = [], None
    for i, n in enumerate(numbers):
        start = n if start is None else start
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            parts.append(str(n) if n == start else f"{start}-{n}")
            start = None
    return ", ".join(parts)


def _one_or_varies(values: Any) -> str:
    distinct = sorted({str(v) for v in values})
    return distinct[0] if len(distinct) == 1 else "varies: " + ", ".join(distinct)


def entry_settings(results: Results) -> pd.DataFrame:
    """One row per entry: its evaluation settings, its comparability key and whether it matches the reference.

    Columns: ``entry``, the entry columns, ``runs``, ``seeds``, the :data:`KEY_COLUMNS`, ``device`` (the
    policies' device and dtype), ``suites``, ``tasks``, ``perturbations``, ``versions``, ``git``,
    ``comparable`` (its key is the reference key) and
    ``differs_in`` (the key columns where it differs from the reference).
    """
    import pandas as pd

    labels = tb.entry_labels(results)
    clean = results.final_episodes()
    perturbed = results.final_episodes(perturbed=True)
    rows = []
    for key, runs in results.runs.groupby(list(ENTRY_COLUMNS), sort=True):
        run_ids = set(runs["run_id"])
        mine = clean[clean["run_id"].isin(run_ids)]
        settings = [json.loads(text) for text in runs["settings_json"]]
        per_task = mine.groupby(["suite", "task"])
        versions = sorted(
            set(results.episodes.loc[results.episodes["run_id"].isin(run_ids), "versions_json"])
        )
        rows.append(
            {
                "entry": labels[key],
                **dict(zip(ENTRY_COLUMNS, key, strict=True)),
                "runs": len(runs),
                "seeds": compact_ranges(runs["run_seed"]),
                "expert_set_id": key[ENTRY_COLUMNS.index("expert_set_id")],
                "tasks_covered": "; ".join(f"{suite}/{task}" for suite, task in per_task.groups),
                "episodes_per_task": _one_or_varies(per_task.size()) if len(mine) else "",
                "init_states": _one_or_varies(
                    per_task["init_state_id"].agg(compact_ranges) if len(mine) else []
                ),
                "max_steps": _one_or_varies(s.get("max_steps") or "env limit" for s in settings),
                "image_size": _one_or_varies(s.get("image_size") or "policy input" for s in settings),
                # absent from the settings of runs under the defaults, so their run ids stay as they were
                "render_profile": _one_or_varies(s.get("render_profile") or "full" for s in settings),
                "device": _one_or_varies(
                    f"{s.get('device') or 'cpu'} {s.get('dtype') or 'float32'}" for s in settings
                ),
                "suites": mine["suite"].nunique(),
                "tasks": len(per_task),
                "perturbations": ", ".join(
                    sorted(set(perturbed.loc[perturbed["run_id"].isin(run_ids), "variant"]))
                ),
                "versions": " | ".join(
                    ", ".join(f"{k} {v}" for k, v in sorted(json.loads(t).items())) for t in versions
                ),
                "git": ", ".join(sorted(set(mine["git_rev"]))),
                "episodes": len(mine),
            }
        )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame.assign(comparable=[], differs_in=[])
    keys = frame[list(KEY_COLUMNS)].apply(tuple, axis=1)
    reference = reference_key(frame)
    frame["comparable"] = [k == reference for k in keys]
    frame["differs_in"] = [
        ", ".join(c for c, mine, ref in zip(KEY_COLUMNS, k, reference, strict=True) if mine != ref)
        for k in keys
    ]
    return frame


def reference_key(settings: pd.DataFrame) -> tuple[Any, ...]:
    """The comparability key shared by the most entries (ties: the most episodes, then the first label)."""
    keyed = settings.assign(key=settings[list(KEY_COLUMNS)].apply(tuple, axis=1))
    votes = keyed.groupby("key").agg(
        entries=("entry", "size"), episodes=("episodes", "sum"), first=("entry", "min")
    )
    votes = votes.reset_index().sort_values(
        ["entries", "episodes", "first"], ascending=[False, False, True], kind="stable"
    )
    return votes["key"].iloc[0]


def reference_settings(settings: pd.DataFrame) -> dict[str, Any]:
    """The reference key as a mapping of :data:`KEY_COLUMNS` to values."""
    return dict(zip(KEY_COLUMNS, reference_key(settings), strict=True))


def comparable_entries(results: Results) -> set[str]:
    """Labels of the entries evaluated under the board's reference settings."""
    settings = entry_settings(results)
    return set(settings.loc[settings["comparable"], "entry"]) if len(settings) else set()
