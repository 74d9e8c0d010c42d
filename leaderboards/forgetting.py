"""The forgetting leaderboard (continual protocol): R matrices, backward transfer, forgetting, curves.

Per entry: the full R matrix (success on every seen skill after each admission), backward transfer,
forgetting per skill, the final mean and the area under the mean-success curve (``metrics`` defines each),
and the curves.

Only unperturbed episodes of continual runs count. A skill's rate is the unweighted mean of its tasks. An
entry whose R matrix has holes (a run stopped between admissions) is listed as incomplete, with no metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlamergebench.eval import metrics
from vlamergebench.leaderboards import tables as tb
from vlamergebench.leaderboards.board import Board

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from vlamergebench.eval.results import Results

TITLE = "Forgetting leaderboard (continual protocol)"
_KEYS = list(metrics.ENTRY_COLUMNS)


def compute(results: Results) -> dict[str, pd.DataFrame]:
    """``summary`` (one row per continual entry) and ``matrix`` (long form: entry, step, skill, rate)."""
    import pandas as pd

    labels = tb.entry_labels(results)
    episodes = results.episodes[
        (results.episodes["protocol"] == "continual") & (results.episodes["variant"] == "")
    ]
    summary, cells = [], []
    for key, group in episodes.groupby(_KEYS, sort=True):
        run_skills = {results.runs.set_index("run_id").loc[r, "skills"] for r in group["run_id"].unique()}
        if len(run_skills) != 1:
            raise ValueError(f"runs of entry {key} admit skills in different orders: {sorted(run_skills)}")
        skills = run_skills.pop()
        matrix = metrics.success_matrix(group, skills)
        row = dict(zip(_KEYS, key, strict=True), skills=len(skills), episodes=len(group))
        cells_needed = len(skills) * (len(skills) + 1) // 2
        missing = sum(bool(np.isnan(matrix[t, i])) for t in range(len(skills)) for i in range(t + 1))
        complete = missing == 0
        row["status"] = (
            "complete" if complete else f"incomplete ({missing} of {cells_needed} R cells missing)"
        )
        if complete:
            curve = metrics.mean_success_curve(matrix)
            row.update(
                final_mean=curve[-1],
                bwt=metrics.backward_transfer(matrix),
                auc=metrics.area_under_curve(matrix),
            )
            forgetting = metrics.forgetting(matrix)
            row["mean_forgetting"] = float(np.mean(forgetting)) if len(forgetting) else float("nan")
            row.update(
                {f"forgetting[{skill}]": value for skill, value in zip(skills, forgetting, strict=False)}
            )
        summary.append(row)
        for t in range(len(skills)):
            for i in range(t + 1):
                if np.isnan(matrix[t, i]):
                    continue
                cell = group[(group["admission_step"] == t + 1) & (group["skill"] == skills[i])]
                per_task = cell.groupby("task")["success"].agg(["mean", "size"])
                estimate = metrics.mean_of_rates(per_task["mean"].tolist(), per_task["size"].tolist())
                cells.append(
                    {
                        **dict(zip(_KEYS, key, strict=True)),
                        "admission_step": t + 1,
                        "skill": skills[i],
                        "skill_index": i,
                        "rate": matrix[t, i],
                        "episodes": estimate.episodes,
                        "ci_low": estimate.low,
                        "ci_high": estimate.high,
                    }
                )
    summary_frame = pd.DataFrame(summary, columns=None if summary else [*_KEYS, "status"])
    matrix_frame = pd.DataFrame(cells, columns=None if cells else [*_KEYS, "admission_step", "skill", "rate"])
    return {"summary": tb.with_entry(summary_frame, labels), "matrix": tb.with_entry(matrix_frame, labels)}


def display(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Human-readable tables: the summary, then each entry's R matrix (rows: admission step)."""
    summary = frames["summary"]
    if summary.empty:
        return {}
    shown = summary[["entry", "skills", "episodes", "status"]].copy()
    for column, name, fmt in [
        ("final_mean", "final mean over skills %", tb.percent),
        ("bwt", "BWT (points)", tb.signed_points),
        ("mean_forgetting", "forgetting (points)", tb.signed_points),
        ("auc", "AUC %", tb.percent),
    ]:
        shown[name] = [fmt(v) for v in summary[column]] if column in summary else tb.MISSING
    sections = {"Continual metrics": shown}
    for entry, group in frames["matrix"].groupby("entry", sort=True):
        matrix = group.pivot_table(
            index="admission_step", columns="skill_index", values="rate", aggfunc="first"
        )
        names = dict(zip(group["skill_index"], group["skill"], strict=True))
        matrix.columns = [names[index] for index in matrix.columns]
        sections[f"R matrix: {entry} (success %, row t = after t admissions)"] = (
            matrix.map(tb.percent).reset_index().rename(columns={"admission_step": "after step"})
        )
    return sections


def figure(frames: dict[str, pd.DataFrame]) -> Figure | None:
    """One panel per entry: each skill's success from its admission on with a 95% Wilson band, the mean.

    The legend sits below the panels, outside every axis, so it never covers a curve.
    """
    matrix = frames["matrix"]
    if matrix.empty:
        return None
    entries = sorted(matrix["entry"].unique())
    columns = min(3, len(entries))
    rows = -(-len(entries) // columns)
    fig = tb.new_figure(4.2 * columns, 3.2 * rows + 0.8)
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    handles = {}
    for ax, entry in zip(axes, entries, strict=False):
        part = matrix[matrix["entry"] == entry]
        for index, by_skill in part.groupby("skill_index"):
            colour = f"C{index % 10}"
            steps = by_skill["admission_step"].to_numpy()
            ax.fill_between(
                steps, 100 * by_skill["ci_low"], 100 * by_skill["ci_high"], color=colour, alpha=0.15, lw=0
            )
            (line,) = ax.plot(steps, 100 * by_skill["rate"], marker="o", lw=1, ms=3, color=colour)
            handles.setdefault(by_skill["skill"].iloc[0], line)
        mean = part.groupby("admission_step")["rate"].mean()
        (line,) = ax.plot(mean.index, 100 * mean.to_numpy(), color="black", lw=2.5)
        handles.setdefault("mean of seen skills", line)
        ax.set_title(entry, fontsize="small")
        ax.set_xlabel("experts admitted")
        ax.set_ylabel("success (%)")
        ax.set_ylim(-3, 103)
        ax.set_xticks(sorted(part["admission_step"].unique()))
        ax.grid(alpha=0.3)
    for ax in axes[len(entries) :]:
        ax.axis("off")
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=min(6, len(handles)),
        fontsize="small",
        frameon=False,
    )
    fig.suptitle("Forgetting curves\n(bands: 95% Wilson interval of each skill)", fontsize="medium")
    return fig


BOARD = Board(
    name="forgetting",
    title=TITLE,
    compute=compute,
    display=display,
    figure=figure,
    figure_file="forgetting_curves.png",
    notes=[
        "BWT = mean over i < T of R[T][i] - R[i][i]; forgetting of skill i = max over i <= t < T of "
        "R[t][i] - R[T][i]; AUC = trapezoid area under the mean-success curve over steps 1..T, / (T - 1).",
        "The final mean is the mean over skills, so it can differ from the success board's overall figure, "
        "an unweighted mean over suites.",
    ],
    page_note="R[t][i] = success on skill i after t admissions; BWT and forgetting in percentage points.",
    empty_notes=lambda frames: ["No continual runs in these results."] if frames["summary"].empty else [],
)
