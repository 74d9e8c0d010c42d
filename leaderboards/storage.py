"""The storage leaderboard: bytes at inference against the expert banks, and the Pareto front with success.

Bytes on disk of everything needed to run every skill, as reported by the merge method and stored per run,
in bytes, as a % of the dense expert bank and as a % of the LoRA bank (docs/leaderboards.md), beside the
entry's overall success; and the storage-vs-success Pareto front.

Storage is read at each run's final admission step. Runs of one entry (seeds) must report the same bytes; if
they do not, the build fails rather than pick one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlamergebench.eval import metrics
from vlamergebench.leaderboards import comparability, paired
from vlamergebench.leaderboards import tables as tb
from vlamergebench.leaderboards.board import Board

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
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


def _clusters(
    x: list[float], y: list[float], numbers: list[int], share_x: float = 0.01, points_y: float = 1.0
) -> list[tuple[tuple[float, float], list[int]]]:
    """Points that one marker covers, merged: one label per cluster, at its first point.

    One marker covers points within ``share_x`` of the storage span and ``points_y`` percentage points.
    """
    span_x = max(max(x) - min(x), 1e-9)
    clusters: list[tuple[tuple[float, float], list[int]]] = []
    for xi, yi, n in sorted(zip(x, y, numbers, strict=True)):
        for (cx, cy), members in clusters:
            if abs(xi - cx) <= share_x * span_x and abs(yi - cy) <= points_y:
                members.append(n)
                break
        else:
            clusters.append(((xi, yi), [n]))
    return clusters


def _label_clusters(
    fig: Figure,
    plot: Axes,
    clusters: list[tuple[tuple[float, float], list[int]]],
    points: dict[int, tuple[float, float]],
) -> None:
    """Number each cluster of points where its label overlaps no other label and no other point.

    Greedy: each label, lowest first, takes the first free spot among offsets to the right of its point,
    then above and below, then to the left; a label moved off its point gets a thin leader line. Written
    here because matplotlib has no label repulsion and the kept library has no placement package; a few
    dozen labels need no more than this search.
    """
    fig.draw_without_rendering()  # fixes the constrained layout, so display coordinates are final
    marker_half = 5.5 * fig.dpi / 72.0  # the Pareto ring's radius in pixels, the widest marker drawn
    markers = {
        number: (cx - marker_half, cy - marker_half, cx + marker_half, cy + marker_half)
        for number, (cx, cy) in ((n, plot.transData.transform(p)) for n, p in points.items())
    }
    inside = plot.get_window_extent()
    placed: list[tuple[float, float, float, float]] = []
    line_height = 9.0  # points: x-small text plus a gap
    # Nearest spot first (a label on the left reads worse, so it counts a fifth farther).
    offsets = sorted(
        (
            (side * gap, 3 + step * line_height)
            for side in (1, -1)
            for gap in (4, 14, 24, 34)
            for step in range(-8, 9)
        ),
        key=lambda o: (1.0 if o[0] > 0 else 1.2) * (o[0] ** 2 + (o[1] - 3) ** 2) ** 0.5,
    )
    for (px, py), numbers in sorted(clusters, key=lambda c: (c[0][1], c[0][0])):
        text = comparability.compact_ranges(numbers)
        obstacles = placed + [box for number, box in markers.items() if number not in numbers]
        probe = plot.annotate(
            text, (px, py), xytext=offsets[0], textcoords="offset points", fontsize="x-small"
        )
        for offset in offsets:  # when no spot is free, the last one tried
            probe.set_position(offset)
            probe.set_horizontalalignment("left" if offset[0] > 0 else "right")
            extent = probe.get_window_extent()
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
            within = (
                inside.x0 <= box[0] and box[2] <= inside.x1 and inside.y0 <= box[1] and box[3] <= inside.y1
            )
            if within and not any(
                box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in obstacles
            ):
                break
        probe.remove()
        placed.append(box)
        moved = offset != offsets[0]  # a label moved off its point gets a leader line to it
        label = plot.annotate(
            text,
            (px, py),
            xytext=offset,
            textcoords="offset points",
            fontsize="x-small",
            horizontalalignment="left" if offset[0] > 0 else "right",
            arrowprops={"arrowstyle": "-", "color": "0.55", "lw": 0.5, "shrinkA": 1, "shrinkB": 3}
            if moved
            else None,
        )
        label.set_in_layout(False)


def figure(frames: dict[str, pd.DataFrame]) -> Figure | None:
    """Overall success vs storage (% of the dense expert bank), with the Pareto front.

    Points are numbered (the key on the right names each number); entries one marker covers share one label
    with all their numbers, and each label sits where it covers no other label or point (a leader line
    when it had to move off its point). Axes are fixed: success 0-100%,
    storage from 0 (plain numbers, never an offset scale; a log scale only when storage spans 20x or more).
    """
    table = frames["storage"].dropna(subset=["rate"]).reset_index(drop=True)
    if table.empty:
        return None
    table = table.assign(number=range(1, len(table) + 1))
    fig = tb.new_figure(10.0, max(4.5, 1.2 + 0.19 * len(table)))
    plot, key = fig.subplots(1, 2, width_ratios=[3, 2])
    x, y = 100 * table["dense_bank_fraction"], 100 * table["rate"]
    err = [100 * (table["rate"] - table["ci_low"]), 100 * (table["ci_high"] - table["rate"])]
    plot.errorbar(x, y, yerr=err, fmt="none", ecolor="0.7", capsize=2, lw=1)
    ranked = table["comparable"].to_numpy()
    plot.scatter(x[ranked], y[ranked], color="C0", s=22, zorder=3, label="entry (ranked)")
    if (~ranked).any():
        plot.scatter(x[~ranked], y[~ranked], color="0.6", marker="s", s=22, zorder=3, label="not ranked")
    front = table[table["pareto"]].sort_values(["dense_bank_fraction", "rate"])
    # Entries on the front can tie within the test (0/80 beside 2/80 at one storage): the line follows the
    # best success reached at each storage, and every front entry gets its ring.
    envelope = front["rate"].cummax()
    plot.step(
        100 * front["dense_bank_fraction"],
        100 * envelope,
        where="post",
        color="C3",
        ls="--",
        lw=1,
        zorder=2,
        marker="o",  # drawn only in the legend (markevery=[]), so its key shows both the line and the ring
        markevery=[],
        markersize=9,
        markerfacecolor="none",
        label="Pareto front (1% storage tolerance, paired test)",
    )
    plot.scatter(
        100 * front["dense_bank_fraction"],
        100 * front["rate"],
        s=110,
        facecolors="none",
        edgecolors="C3",
        zorder=4,
    )
    if x.max() / max(x.min(), 1e-9) > 20:
        plot.set_xscale("log")
    else:
        plot.set_xlim(0, max(x.max() * 1.1, 1))
    tb.plain_axis(plot)
    plot.set_xlabel("storage (% of the dense expert bank)")
    plot.set_ylabel("overall success (%), 95% Wilson interval")
    plot.set_ylim(-3, 103)
    plot.grid(alpha=0.3)
    plot.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), fontsize="small", frameon=False, ncols=2)
    plot.set_title("Storage vs success")
    xs, ys, numbers = x.tolist(), y.tolist(), table["number"].tolist()
    points = dict(zip(numbers, zip(xs, ys, strict=True), strict=True))
    _label_clusters(fig, plot, _clusters(xs, ys, numbers), points)
    key.axis("off")
    key.set_title("key", loc="left", fontsize="small")
    lines = [f"{n:>2}  {entry}" for n, entry in zip(table["number"], table["entry"], strict=True)]
    key.text(0, 1, "\n".join(lines), va="top", ha="left", family="monospace", fontsize="x-small")
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
