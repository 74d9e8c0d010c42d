"""The storage leaderboard: bytes at inference against the expert banks, and the Pareto front with success.

Bytes on disk of everything needed to run every skill, as reported by the merge method and stored per run,
in bytes, as a % of the dense expert bank and as a % of the LoRA bank (DESIGN.md "Storage"), beside the
entry's overall success; and the storage-vs-success Pareto front.

Storage is read at each run's final admission step. Runs of one entry (seeds) must report the same bytes; if
they do not, the build fails rather than pick one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlamergebench.leaderboards import comparability, paired
from vlamergebench.leaderboards import tables as tb
from vlamergebench.leaderboards.board import Board

from vlamergebench.eval import metrics

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from vlamergebench.eval.results import Results

TITLE = "Storage leaderboard"
_KEYS = list(metrics.ENTRY_COLUMNS)


def compute(results: Results) -> dict[str, pd.DataFrame]:
    """``storage``: one row per entry with storage figures and overall success (fractions, bytes)."""
    runs = results.runs.assign(final_step=results.runs["skills"].map(len))
    final = results.storage.merge(runs[["run_id", "final_step", *_KEYS]], on="run_id")
    final = final[final["admission_step"] == final["final_step"]]
    figures = ["total_bytes", "dense_bank_bytes", "lora_bank_bytes", "parameters"]
    for key, group in final.groupby(_KEYS):
        if len(group[figures].drop_duplicates()) > 1:
            raise ValueError(
                f"runs {sorted(group['run_id'])} of entry {key} report different storage figures"
            )
    per_entry = final.drop_duplicates(_KEYS)[[*_KEYS, *figures, "breakdown_json"]]
    overall = metrics.overall_table(metrics.task_table(results.final_episodes()))
    table = per_entry.merge(overall[[*_KEYS, "rate", "ci_low", "ci_high", "episodes"]], on=_KEYS, how="left")
    table["dense_bank_fraction"] = table["total_bytes"] / table["dense_bank_bytes"]
    table["lora_bank_fraction"] = table["total_bytes"] / table["lora_bank_bytes"]
    labels = tb.entry_labels(results)
    table = tb.with_entry(table, labels)
    comparable = comparability.comparable_entries(results)
    table["comparable"] = table["entry"].isin(comparable) & table["rate"].notna()
    table["pareto"] = False
    ranked = table[table["comparable"]]
    entries = ranked["entry"].tolist()
    episodes = tb.with_entry(results.final_episodes(), labels)
    outcomes = paired.outcomes_by_pair(episodes[episodes["entry"].isin(entries)])
    better = paired.significance_matrix(outcomes, entries)
    table.loc[ranked.index, "pareto"] = paired.pareto_front(
        ranked["total_bytes"].tolist(),
        ranked["rate"].tolist(),
        [[better.get((a, b), False) for b in entries] for a in entries],
    )
    table = table.sort_values(["total_bytes", "rate"], ascending=[True, False], kind="stable")
    return {"storage": table.reset_index(drop=True)}


def display(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Human-readable table (MiB, percentages), keyed by section heading."""
    table = frames["storage"]
    shown = table[["entry"]].copy()
    shown["size"] = [tb.human_bytes(b) for b in table["total_bytes"]]
    shown["bytes"] = table["total_bytes"].astype(int)
    shown["% dense bank"] = [tb.percent(v) for v in table["dense_bank_fraction"]]
    shown["% LoRA bank"] = [tb.percent(v) for v in table["lora_bank_fraction"]]
    shown["parameters"] = [tb.MISSING if p != p or p is None else f"{int(p):,}" for p in table["parameters"]]
    shown["success % [95% CI]"] = [
        tb.rate_with_interval(*v) for v in table[["rate", "ci_low", "ci_high"]].itertuples(index=False)
    ]
    shown["Pareto"] = [
        "yes" if p else ("" if ok else "not ranked") for p, ok in table[["pareto", "comparable"]].to_numpy()
    ]
    return {"Storage at inference (final admission step)": shown}


def figure(frames: dict[str, pd.DataFrame]) -> Figure | None:
    """Overall success vs storage (% of the dense expert bank), with the Pareto front."""
    table = frames["storage"].dropna(subset=["rate"])
    if table.empty:
        return None
    fig = tb.new_figure(7.5, 5.0)
    ax = fig.add_subplot()
    x, y = 100 * table["dense_bank_fraction"], 100 * table["rate"]
    err = [100 * (table["rate"] - table["ci_low"]), 100 * (table["ci_high"] - table["rate"])]
    ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, color="C0", ecolor="0.6")
    for xi, yi, label in zip(x, y, table["entry"], strict=True):
        ax.annotate(label, (xi, yi), textcoords="offset points", xytext=(5, 4), fontsize="x-small")
    front = table[table["pareto"]].sort_values("dense_bank_fraction")
    ax.step(
        100 * front["dense_bank_fraction"],
        100 * front["rate"],
        where="post",
        color="C3",
        ls="--",
        label="Pareto front",
    )
    if x.max() / max(x.min(), 1e-9) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("storage (% of the dense expert bank)")
    ax.set_ylabel("overall success (%), 95% Wilson interval")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Storage vs success")
    return fig


BOARD = Board(
    name="storage",
    title=TITLE,
    compute=compute,
    display=display,
    figure=figure,
    figure_file="storage_pareto.png",
    notes=[
        "Bytes of everything needed to run every skill (base, shared tensors, per-skill parts, routers, "
        "statistics), as reported by each merge method.",
        "Pareto front: entry A dominates B when A's storage is at most 1% above B's, A's success is at least "
        "B's, and A is either more than 1% smaller or significantly more successful (paired test over "
        "matching episodes, Benjamini-Hochberg adjusted, 5%). Only entries under the reference settings are "
        "on it.",
    ],
    page_note="Bytes at inference as reported by each method, against the dense and the LoRA expert banks; "
    "Pareto front with a 1% storage tolerance and the paired success test.",
)
