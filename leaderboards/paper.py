"""The paper table: ranked entries x suites, their average and storage, as LaTeX (booktabs) and Markdown.

The form of LIBERO-style papers: one row per method, one column per suite (success %), the average over
suites, and storage (% of the dense expert bank); the best value of each column in bold (highest success,
lowest storage). Only entries under the board's reference settings appear, in rank order (the success
board's ranks with ties); the Markdown file carries the same numbers as the LaTeX file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from vlamergebench.leaderboards import storage, success
from vlamergebench.leaderboards import tables as tb
from vlamergebench.leaderboards.board import Board

if TYPE_CHECKING:
    import pandas as pd

    from vlamergebench.eval.results import Results

TITLE = "Paper table: success per suite, average and storage"
STORAGE_COLUMN = "storage (% dense)"
AVERAGE_COLUMN = "average"


def compute(results: Results) -> dict[str, pd.DataFrame]:
    """``table``: one row per ranked entry; rates as fractions, storage as a fraction of the dense bank."""
    success_frames = success.compute(results)
    overall = success_frames["overall"]
    overall = overall[overall["comparable"]]
    suites = success_frames["suites"].pivot_table(
        index="entry", columns="suite", values="rate", aggfunc="first"
    )
    table = overall[["rank", "entry"]].set_index("entry")
    table = table.join(suites).join(overall.set_index("entry")["rate"].rename(AVERAGE_COLUMN))
    fractions = storage.compute(results)["storage"].set_index("entry")["dense_bank_fraction"]
    table[STORAGE_COLUMN] = fractions.reindex(table.index)
    return {"table": table.reset_index()}


def _best(frame: pd.DataFrame) -> dict[str, float]:
    best = {}
    for column in frame.columns[2:]:
        values = frame[column].dropna()
        if len(values):
            best[column] = values.min() if column == STORAGE_COLUMN else values.max()
    return best


def _cells(frame: pd.DataFrame, bold: str) -> pd.DataFrame:
    """Percent with one decimal; the best of each column wrapped as ``bold`` says (``"**{}**"``)."""
    best = _best(frame)
    shown = frame[["rank", "entry"]].copy()
    shown["rank"] = shown["rank"].astype(int)
    for column in frame.columns[2:]:
        shown[column] = [
            tb.MISSING
            if np.isnan(v)
            else (bold.format(tb.percent(v)) if v == best[column] else tb.percent(v))
            for v in frame[column]
        ]
    return shown


def display(frames: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The table with success in %, storage in % of the dense bank, the best of each column in bold."""
    frame = frames["table"]
    return {
        "Success (%) per suite, average over suites, storage (% of the dense bank)": _cells(frame, "**{}**")
    }


def latex(frames: dict[str, pd.DataFrame]) -> str | None:
    r"""A booktabs table (``\toprule``, ``\midrule``, ``\bottomrule``) with the best values in bold."""
    frame = frames["table"]
    if frame.empty:
        return None
    shown = _cells(frame, "\\textbf{{{}}}")
    shown["entry"] = [_escape(text) for text in shown["entry"]]
    shown.columns = [_escape(c) for c in shown.columns]
    body = shown.style.hide(axis="index").to_latex(
        hrules=True,
        column_format="r l " + "r " * (len(shown.columns) - 2),
        caption="Success rate (\\%) per suite, the average over suites and storage (\\% of the dense expert "
        "bank); best in bold; rank 1 + entries significantly better (paired test).",
        label="tab:vlamergebench",
        position="t",
    )
    return "% needs \\usepackage{booktabs}\n" + body.replace("—", "--")


def _escape(text: str) -> str:
    r"""LaTeX-safe text: the ten special characters escaped, the middle dot as ``\textperiodcentered``."""
    replacements = {
        "\\": "\\textbackslash{}",
        "&": "\\&",
        "%": "\\%",
        "$": "\\$",
        "#": "\\#",
        "_": "\\_",
        "{": "\\{",
        "}": "\\}",
        "~": "\\textasciitilde{}",
        "^": "\\textasciicircum{}",
        "·": "\\textperiodcentered{}",
    }
    return "".join(replacements.get(ch, ch) for ch in str(text))


BOARD = Board(
    name="paper",
    title=TITLE,
    compute=compute,
    display=display,
    notes=[
        "Entries under the reference settings, in rank order (ties share a rank); `paper.tex` holds the "
        "same numbers as a LaTeX booktabs table."
    ],
    page_note="Ranked entries x suites, the average and storage, best in bold; also as LaTeX (paper.tex).",
    latex=latex,
)
