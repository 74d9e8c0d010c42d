"""The board protocol: what one leaderboard is (compute, display, figure) and how any board is written.

A board is three pure functions of the results and a few names:

- ``compute(results) -> {frame name: DataFrame}``: machine-readable tables (rates as fractions);
- ``display(frames) -> {section heading: DataFrame}``: the human-readable tables, first section the headline;
- ``figure(frames) -> Figure | None``: the board's plot.

:meth:`Board.build` writes every board the same way (one CSV per frame, one Markdown file, the figure
as PNG and SVG); the page
and the command line iterate over the registered boards (``registry.boards()``), so a new board is its own
module and one ``register`` call, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from vlamergebench.leaderboards import tables as tb

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from vlamergebench.eval.results import Results

Frames = dict[str, "pd.DataFrame"]


@dataclass(frozen=True)
class Board:
    """One leaderboard.

    Attributes:
        name: File prefix and builder name (``success`` -> ``success.md``, ``success_<frame>.csv``; a frame
            named like the board is written as ``<name>.csv``).
        title: Heading of the Markdown file and of the page section.
        compute: Results -> machine-readable frames.
        display: Frames -> human-readable sections (heading -> table); the first is the headline table.
        figure: Frames -> the board's figure, or None when there is nothing to draw (no callable: tables
            only).
        figure_file: The PNG's file name.
        notes: Paragraphs under the Markdown title.
        page_note: The one-line note under the page section's heading.
        empty_notes: Frames -> extra notes when the board has nothing to show (e.g. "no continual runs").
        latex: Frames -> a LaTeX table written as ``<name>.tex`` (None: no LaTeX for this board).
    """

    name: str
    title: str
    compute: Callable[[Results], Frames]
    display: Callable[[Frames], dict[str, pd.DataFrame]]
    figure: Callable[[Frames], Figure | None] | None = None
    figure_file: str = ""
    notes: Sequence[str] = ()
    page_note: str = ""
    empty_notes: Callable[[Frames], Sequence[str]] = field(default=lambda frames: ())
    latex: Callable[[Frames], str | None] | None = None

    def plot(self, frames: Frames) -> Figure | None:
        """The board's figure, or None for a board of tables only."""
        return self.figure(frames) if self.figure is not None else None

    @property
    def markdown_file(self) -> str:
        """The Markdown file's name."""
        return f"{self.name}.md"

    def csv_file(self, frame: str) -> str:
        """The CSV file name of frame ``frame``."""
        return f"{self.name}.csv" if frame == self.name else f"{self.name}_{frame}.csv"

    def build(self, results: Results, out_dir: Path) -> list[Path]:
        """Write the board's CSVs, Markdown and PNG into ``out_dir``; returns the files written."""
        frames = self.compute(results)
        written = [tb.write_csv(frame, out_dir / self.csv_file(name)) for name, frame in frames.items()]
        notes = [*self.notes, *self.empty_notes(frames)]
        sections = self.display(frames)
        written.append(tb.write_markdown(out_dir / self.markdown_file, self.title, sections, notes))
        text = self.latex(frames) if self.latex is not None else None
        if text is not None:
            (out_dir / f"{self.name}.tex").write_text(text, encoding="utf-8")
            written.append(out_dir / f"{self.name}.tex")
        fig = self.plot(frames)
        if fig is not None:
            written.append(tb.save_png(fig, out_dir / self.figure_file))
            written.append(tb.save_vector(fig, (out_dir / self.figure_file).with_suffix(".svg")))
        return written
