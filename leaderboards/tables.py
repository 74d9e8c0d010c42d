"""Table and figure plumbing shared by the builders: entry labels, number formats, CSV/Markdown/PNG writers.

An *entry* is one row of a leaderboard: a method with one config, on one expert set, under one protocol and
one routing mode (``metrics.ENTRY_COLUMNS``); several runs of an entry (seeds) are pooled. Labels are a pure
function of the results, so every builder names an entry the same way without sharing anything.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlamergebench.eval.metrics import ENTRY_COLUMNS

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from vlamergebench.eval.results import Results

MISSING = "—"


def entry_labels(results: Results) -> dict[tuple[Any, ...], str]:
    """A short, unique, readable label for every entry in ``results``.

    ``method [· cfg <hash>] [· set <id>] [· continual] · <routing>``; the config hash and the expert set are
    shown only where the results hold more than one of them for that method.
    """
    runs = results.runs.drop_duplicates(list(ENTRY_COLUMNS))
    configs = runs.groupby("method")["method_config_hash"].nunique()
    sets = runs.groupby("method")["expert_set_id"].nunique()
    labels = {}
    for row in runs.itertuples():
        parts = [row.method]
        if configs[row.method] > 1:
            parts.append(f"cfg {row.method_config_hash[:6]}")
        if sets[row.method] > 1:
            parts.append(f"set {row.expert_set_id[:8]}")
        if row.protocol == "continual":
            parts.append("continual")
        parts.append(
            {"oracle": "oracle", "method": "own router"}.get(row.routing_mode, f"router {row.router}")
        )
        labels[tuple(getattr(row, column) for column in ENTRY_COLUMNS)] = " · ".join(parts)
    return labels


def with_entry(frame: pd.DataFrame, labels: Mapping[tuple[Any, ...], str]) -> pd.DataFrame:
    """A copy of ``frame`` with an ``entry`` label column first."""
    keys = frame[list(ENTRY_COLUMNS)].itertuples(index=False, name=None)
    labelled = frame.copy()
    labelled.insert(0, "entry", [labels[tuple(key)] for key in keys])
    return labelled


def percent(value: float | None) -> str:
    """``0.875`` -> ``"87.5"``; missing -> an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{100 * value:.1f}"


def rate_with_interval(rate: float, low: float, high: float) -> str:
    """``"87.5 [80.1, 92.3]"`` in percent; missing -> an em dash."""
    if rate is None or math.isnan(rate):
        return MISSING
    return f"{percent(rate)} [{percent(low)}, {percent(high)}]"


def human_bytes(count: float) -> str:
    """``1536`` -> ``"1.50 KiB"`` (binary units)."""
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} GiB"


def signed_points(value: float | None) -> str:
    """A difference of rates in percentage points with its sign: ``-0.3`` -> ``"-30.0"``."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{100 * value:+.1f}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``frame``'s columns (cells as plain text).

    Names come from anyone's bundle, so HTML is escaped (a viewer renders ``<script>`` as text) as well as
    the pipes and newlines that would break the table.
    """

    def cell(value: Any) -> str:
        text = MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
        return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_markdown(
    path: Path, title: str, sections: Mapping[str, pd.DataFrame], notes: Sequence[str] = ()
) -> Path:
    """One Markdown file: a title, notes, then a heading and a table per section."""
    parts = [f"# {title}\n"] + [f"{note}\n" for note in notes]
    for heading, frame in sections.items():
        parts.append(f"## {heading}\n\n" + (markdown_table(frame) if len(frame) else "_no rows_\n"))
    path.write_text("\n".join(parts))
    return path


# A spreadsheet evaluates a cell starting with one of these as a formula (OWASP "CSV injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value``, with a leading ``'`` if it is text a spreadsheet would read as a formula or a number."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value


def write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """The machine-readable table (rates as fractions, full precision; text cells spreadsheet-safe)."""
    from pandas.api.types import is_numeric_dtype

    safe = frame.copy()
    for column in safe.columns:
        if not is_numeric_dtype(safe[column]):
            safe[column] = safe[column].map(spreadsheet_safe)
    safe.columns = [spreadsheet_safe(str(column)) for column in safe.columns]
    safe.to_csv(path, index=False)
    return path


FIGURE_DPI = 200


def new_figure(width_in: float, height_in: float) -> Figure:
    """A matplotlib figure that touches no global pyplot state (builders may run in any order or thread)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=FIGURE_DPI, layout="constrained")


def plain_axis(axis: Any) -> None:
    """Tick labels as plain numbers: no offset (``+1.234e3``) and no scientific notation on either axis."""
    from matplotlib.ticker import ScalarFormatter

    for which in (axis.xaxis, axis.yaxis):
        if isinstance(which.get_major_formatter(), ScalarFormatter):
            formatter = ScalarFormatter(useOffset=False)
            formatter.set_scientific(False)
            which.set_major_formatter(formatter)


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as PNG at :data:`FIGURE_DPI`."""
    figure.savefig(path, format="png", dpi=FIGURE_DPI)
    return path


def save_vector(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as SVG (text kept as text, so labels stay selectable and searchable)."""
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vlamergebench"}):
        figure.savefig(path, format="svg", metadata={"Date": None})
    return path
