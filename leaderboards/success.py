"""The success leaderboard: success with Wilson intervals, routing accuracy, confusion, perturbations.

Per entry: overall / per suite / per task success with Wilson 95% intervals and the episodes counted, oracle
and routed entries side by side, routing accuracy and confusion matrices, and perturbation aggregates.

Only each run's final model is ranked (admission step T; a continual run's earlier steps belong to the
forgetting leaderboard). An episode that ended in a simulator error counts as a failure; the ``errors``
column says how many there were. An episode lost to the infrastructure (its worker process died) is in no
rate; the ``infrastructure_errors`` column counts those a resume has yet to rerun.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlamergebench.eval import metrics
from vlamergebench.leaderboards import comparability, paired
from vlamergebench.leaderboards import tables as tb
from vlamergebench.leaderboards.board import Board

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from vlamergebench.eval.results import Results

TITLE = "Success leaderboard"


def compute(results: Results) -> dict[str, pd.DataFrame]:
    """Machine-readable tables, rates as fractions.

    Returns:
        ``overall``, ``suites``, ``tasks``, ``routing``, ``routing_by_task``, ``confusion`` (long form) and
        ``perturbations``, each with an ``entry`` label column first.
    """
    import pandas as pd

    labels = tb.entry_labels(results)
    episodes = results.final_episodes()
    tasks = metrics.task_table(episodes)
    overall = metrics.overall_table(tasks)
    routing = metrics.routing_table(episodes)
    errors = tasks.groupby(list(metrics.ENTRY_COLUMNS))["errors"].sum().rename("errors").reset_index()
    overall = overall.merge(errors, on=list(metrics.ENTRY_COLUMNS), how="left")
    lost = results.infrastructure_errors
    lost_counts = (
        lost.groupby(list(metrics.ENTRY_COLUMNS)).size() if lost is not None and len(lost) else pd.Series()
    )
    overall["infrastructure_errors"] = [
        int(lost_counts.get(key, 0))
        for key in overall[list(metrics.ENTRY_COLUMNS)].itertuples(index=False, name=None)
    ]
    accuracy = routing[[*metrics.ENTRY_COLUMNS, "rate", "ci_low", "ci_high"]].rename(
        columns={"rate": "routing_accuracy", "ci_low": "routing_ci_low", "ci_high": "routing_ci_high"}
    )
    overall = overall.merge(accuracy, on=list(metrics.ENTRY_COLUMNS), how="left")
    confusion = []
    for key, group in episodes[episodes["routing_mode"] != "oracle"].groupby(list(metrics.ENTRY_COLUMNS)):
        skills = results.runs.loc[results.runs["run_id"] == group["run_id"].iloc[0], "skills"].iloc[0]
        matrix = metrics.confusion_matrix(group, skills).stack().rename("episodes").reset_index()
        confusion.append(matrix.assign(**dict(zip(metrics.ENTRY_COLUMNS, key, strict=True))))
    confusion_frame = (
        pd.concat(confusion, ignore_index=True)
        if confusion
        else pd.DataFrame(columns=[*metrics.ENTRY_COLUMNS, "true skill", "routed skill", "episodes"])
    )
    frames = {
        "overall": overall.sort_values("rate", ascending=False, kind="stable"),
        "suites": metrics.suite_table(tasks),
        "tasks": tasks,
        "routing": routing,
        "routing_by_task": metrics.routing_table(episodes, by=("suite", "task")),
        "confusion": confusion_frame,
        "perturbations": metrics.perturbation_table(results.final_episodes(perturbed=True)),
    }
    labelled = {name: tb.with_entry(frame, labels) for name, frame in frames.items()}
    labelled["overall"] = _paired_columns(labelled["overall"], tb.with_entry(episodes, labels), results)
    return labelled


BANK_METHOD = "expert_bank"


def _paired_columns(overall: pd.DataFrame, episodes: pd.DataFrame, results: Results) -> pd.DataFrame:
    """Comparability, ranks with ties and paired differences to the expert bank and to the best entry.

    Only entries under the board's reference settings (:mod:`comparability`) are ranked and compared; the
    rest keep NaN in these columns and ``comparable`` False.
    """
    settings = comparability.entry_settings(results)
    comparable = set(settings.loc[settings["comparable"], "entry"]) if len(settings) else set()
    overall = overall.assign(comparable=overall["entry"].isin(comparable))
    ranked = overall[overall["comparable"]].sort_values(["rate", "entry"], ascending=[False, True])
    order = ranked["entry"].tolist()
    outcomes = paired.outcomes_by_pair(episodes[episodes["entry"].isin(comparable)])
    ranks = paired.ranks_with_ties(order, paired.significance_matrix(outcomes, order))
    overall["rank"] = overall["entry"].map(ranks)
    banks = [e for e in order if e.startswith(f"{BANK_METHOD} ") and e.endswith("· oracle")]
    for prefix, reference in (
        ("vs_bank", banks[0] if banks else None),
        ("vs_best", order[0] if order else None),
    ):
        rows = []
        for entry in overall["entry"]:
            result = None
            if reference is not None and entry in comparable and entry != reference:
                result = paired.compare(outcomes, entry, reference)
            rows.append(
                (np.nan,) * 5
                if result is None
                else (result.difference, result.low, result.high, result.p_value, result.pairs)
            )
        for i, column in enumerate(("", "_low", "_high", "_p", "_pairs")):
            overall[prefix + column] = [row[i] for row in rows]
    overall["best_entry"] = order[0] if order else ""
    overall["bank_entry"] = banks[0] if banks else ""
    return overall.sort_values(
        ["comparable", "rate", "entry"], ascending=[False, False, True], kind="stable"
    ).reset_index(drop=True)


def _difference(frame: pd.DataFrame, prefix: str) -> list[str]:
    """``"-12.5 [-30.0, 0.0] p=0.25"`` per row: a paired difference in points with its interval and p."""
    shown = []
    for diff, low, high, p in frame[[prefix, f"{prefix}_low", f"{prefix}_high", f"{prefix}_p"]].to_numpy():
        if np.isnan(diff):
            shown.append(tb.MISSING)
        else:
            shown.append(
                f"{tb.signed_points(diff)} [{tb.signed_points(low)}, {tb.signed_points(high)}] p={p:.2g}"
            )
    return shown


def _fold_zero_rows(board: pd.DataFrame, zero: pd.Series) -> pd.DataFrame:
    """All-zero entries as one row: their names joined, shared cells kept, differing cells as ``varies``."""
    import pandas as pd

    if zero.sum() < 2:
        return board
    folded = board[zero.to_numpy()]
    row = {}
    for column in board.columns:
        values = folded[column].astype(str).unique()
        row[column] = values[0] if len(values) == 1 else "varies"
    row["entry"] = f"{len(folded)} entries with no success: " + ", ".join(folded["entry"])
    return pd.concat([board[~zero.to_numpy()], pd.DataFrame([row])], ignore_index=True)


def display(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Human-readable tables (percent with intervals), keyed by section heading."""

    def rated(frame: pd.DataFrame, keep: list[str], rate: str = "success % [95% CI]") -> pd.DataFrame:
        shown = frame[keep].copy()
        shown[rate] = [
            tb.rate_with_interval(*v) for v in frame[["rate", "ci_low", "ci_high"]].itertuples(index=False)
        ]
        return shown

    everything = frames["overall"]
    suites = frames["suites"].pivot_table(index="entry", columns="suite", values="rate", aggfunc="first")

    def overall_table(overall: pd.DataFrame) -> pd.DataFrame:
        lost = ["infrastructure_errors"] if overall["infrastructure_errors"].any() else []  # shown when any
        board = rated(overall, ["entry", "routing_mode", "suites", "tasks", "episodes", "errors", *lost])
        for suite in suites.columns:
            board[f"{suite} %"] = [tb.percent(suites[suite].get(entry)) for entry in overall["entry"]]
        board["routing accuracy %"] = [
            tb.rate_with_interval(*v)
            for v in overall[["routing_accuracy", "routing_ci_low", "routing_ci_high"]].to_numpy()
        ]
        return board

    overall = everything[everything["comparable"]]
    board = overall_table(overall)
    board.insert(0, "rank", overall["rank"].astype(int).to_numpy())
    bank, best = (
        overall["bank_entry"].iloc[0] if len(overall) else "",
        overall["best_entry"].iloc[0] if len(overall) else "",
    )
    board.insert(
        board.columns.get_loc("success % [95% CI]") + 1,
        f"vs {bank or 'expert bank'} (points)",
        _difference(overall, "vs_bank"),
    )
    board.insert(
        board.columns.get_loc("success % [95% CI]") + 2,
        f"vs best, {best} (points)",
        _difference(overall, "vs_best"),
    )
    sections = {
        "Overall (unweighted mean of suites), entries under the reference settings": _fold_zero_rows(
            board, overall["rate"].reset_index(drop=True) == 0
        )
    }
    others = everything[~everything["comparable"]]
    if len(others):
        sections["Not ranked: evaluated under other settings than the reference (see the entries board)"] = (
            overall_table(others)
        )
    sections["Per suite (unweighted mean of tasks)"] = rated(
        frames["suites"], ["entry", "suite", "tasks", "episodes"]
    )
    sections["Per task"] = rated(frames["tasks"], ["entry", "suite", "task", "episodes", "errors"])
    if len(frames["routing"]):  # oracle-only results have no routing to show
        sections["Routing accuracy"] = rated(
            frames["routing"], ["entry", "episodes", "correct"], "accuracy % [95% CI]"
        )
        sections["Routing accuracy per task"] = rated(
            frames["routing_by_task"],
            ["entry", "suite", "task", "episodes", "correct"],
            "accuracy % [95% CI]",
        )
    for entry, group in frames["confusion"].groupby("entry", sort=True):
        matrix = group.pivot_table(
            index="true skill", columns="routed skill", values="episodes", aggfunc="sum", sort=False
        )
        matrix.columns.name = None
        sections[f"Confusion matrix: {entry} (rows: true skill, columns: routed skill)"] = (
            matrix.reset_index()
        )
    if len(frames["perturbations"]):
        sections["Perturbations (labelled aggregates)"] = rated(
            frames["perturbations"], ["entry", "aggregate", "axis", "level", "episodes"]
        )
    return sections


def figure(frames: dict[str, pd.DataFrame]) -> Figure | None:
    """One facet per suite and one for the overall rate: per entry, the rate with its 95% Wilson interval.

    Every facet shares the entry axis (ranked entries first, best on top) and a fixed 0-100% rate axis, so
    the facets read across; the whiskers never overlap because each facet holds one point per entry.
    """
    overall = frames["overall"].iloc[::-1]  # ranked order, best at the top of the plot
    if overall.empty:
        return None
    suites = frames["suites"]
    names = sorted(suites["suite"].unique())
    facets = [("overall", overall), *[(name, suites[suites["suite"] == name]) for name in names]]
    fig = tb.new_figure(2.1 * len(facets) + 2.6, 0.9 + 0.28 * len(overall))
    axes = fig.subplots(1, len(facets), sharey=True, squeeze=False)[0]
    row_of = {entry: i for i, entry in enumerate(overall["entry"])}
    for n, (ax, (name, part)) in enumerate(zip(axes, facets, strict=True)):
        part = part[part["entry"].isin(row_of)]
        y = [row_of[e] for e in part["entry"]]
        err = [100 * (part["rate"] - part["ci_low"]), 100 * (part["ci_high"] - part["rate"])]
        colour = "black" if name == "overall" else f"C{n - 1}"
        marker = "D" if name == "overall" else "o"
        ax.errorbar(100 * part["rate"], y, xerr=err, fmt=marker, ms=4, capsize=2, color=colour, lw=1)
        ax.set_xlim(-3, 103)
        ax.set_xticks([0, 25, 50, 75, 100])
        ax.set_title(name, fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlabel("success (%)")
    unranked = ~overall["comparable"].to_numpy() if "comparable" in overall else np.zeros(len(overall), bool)
    labels = [f"{e} (not ranked)" if u else e for e, u in zip(overall["entry"], unranked, strict=True)]
    axes[0].set_yticks(range(len(overall)), labels, fontsize="small")
    axes[0].set_ylim(-0.7, len(overall) - 0.3)
    fig.suptitle(f"{TITLE}: success rate with 95% Wilson interval, per suite")
    return fig


BOARD = Board(
    name="success",
    title=TITLE,
    compute=compute,
    display=display,
    figure=figure,
    figure_file="success.png",
    notes=[
        "Final model of each run; episodes with a simulator error count as failures (column `errors`); "
        "episodes whose worker process died are in no rate (column `infrastructure_errors`: rerun them by "
        "resuming the run)."
    ],
    page_note="Final model of each run; success rates in %, Wilson 95% intervals; suites are unweighted "
    "means of their tasks, overall the unweighted mean of suites; simulator errors count as failures.",
)
