"""The entries board: how every entry was evaluated, the board's reference settings and each config's values.

A leaderboard number means little without its settings: this board lists, per entry, the expert set, the
suites and tasks covered, episodes per task, init states, the step cap, the image size, the render profile,
the policies' device, the perturbed variants, the seeds and the package versions; it marks the entries
whose settings differ from the board's reference (they are not ranked,
:mod:`~vlamergebench.leaderboards.comparability`) and spells out the resolved config behind every ``cfg``
tag of an entry label.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from vlamergebench.leaderboards import comparability
from vlamergebench.leaderboards import tables as tb
from vlamergebench.leaderboards.board import Board

if TYPE_CHECKING:
    import pandas as pd

    from vlamergebench.eval.results import Results

TITLE = "Entries: evaluation settings and configs"


def compute(results: Results) -> dict[str, pd.DataFrame]:
    """``settings`` (one row per entry), ``reference`` (one row) and ``configs`` (one row per config)."""
    import pandas as pd

    settings = comparability.entry_settings(results)
    reference = (
        pd.DataFrame([comparability.reference_settings(settings)])
        if len(settings)
        else pd.DataFrame(columns=list(comparability.KEY_COLUMNS))
    )
    configs = results.runs.drop_duplicates(["method", "method_config_hash"]).sort_values(
        ["method", "method_config_hash"]
    )
    labels = tb.entry_labels(results)
    entries_of = {}
    for key, label in labels.items():
        entries_of.setdefault((key[0], key[1]), []).append(label)
    config_frame = pd.DataFrame(
        {
            "method": configs["method"].to_numpy(),
            "cfg": [h[:6] for h in configs["method_config_hash"]],
            "config_hash": configs["method_config_hash"].to_numpy(),
            "config": [
                ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(json.loads(text).items()))
                for text in configs["method_config_json"]
            ],
            "entries": [
                "; ".join(sorted(entries_of.get((m, h), [])))
                for m, h in zip(configs["method"], configs["method_config_hash"], strict=True)
            ],
        }
    )
    return {"settings": settings, "reference": reference, "configs": config_frame}


def display(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The reference settings, then each entry's settings, then the configs."""
    settings = frames["settings"]
    if settings.empty:
        return {}
    shown = settings[
        [
            "entry",
            "expert_set_id",
            "suites",
            "tasks",
            "episodes_per_task",
            "init_states",
            "max_steps",
            "image_size",
            "render_profile",
            "device",
            "seeds",
            "perturbations",
        ]
    ].copy()
    shown["ranked"] = [
        "yes" if ok else f"no: differs in {why}"
        for ok, why in settings[["comparable", "differs_in"]].to_numpy()
    ]
    shown = shown.rename(columns=lambda c: c.replace("_", " "))
    reference = frames["reference"].rename(columns=lambda c: c.replace("_", " "))
    return {
        "Reference settings (the settings shared by the most entries; only entries under them are ranked)": (
            reference
        ),
        "Evaluation settings per entry": shown,
        "Resolved config of every cfg tag": frames["configs"][["method", "cfg", "config", "entries"]],
        "Package versions (one row per distinct set)": settings.groupby(["versions", "git"], sort=True)[
            "entry"
        ]
        .agg(lambda entries: "all entries" if len(entries) == len(settings) else "; ".join(entries))
        .rename("entries")
        .reset_index(),
    }


BOARD = Board(
    name="entries",
    title=TITLE,
    compute=compute,
    display=display,
    notes=[
        "Only the settings that change the ranked number decide comparability: the expert set, the tasks, "
        "the episodes per task, the init states, the step cap, the image size and the render profile. "
        "Perturbed variants, seeds, the policies' device and package versions are shown but do not split "
        "the ranking."
    ],
    page_note="How each entry was evaluated; entries under other settings than the reference are not ranked.",
)
