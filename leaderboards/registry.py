"""The leaderboard builders, registered in one place (``vlamergebench/registry.py``'s pattern).

Two kinds of builder. A *board* (``kind="board"``, entry point a
:class:`~vlamergebench.leaderboards.board.Board`) is one leaderboard: its tables, Markdown and figure. The
page and the command line's printout iterate over the registered boards, so adding a board is one module and
one ``register`` call here. The *page* gathers every board into one HTML file. Builders read only the
:class:`~vlamergebench.eval.results.Results` of the stores and share no state, so any subset runs in any
order.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from vlamergebench.registry import Registry

if TYPE_CHECKING:
    from vlamergebench.eval.results import Results
    from vlamergebench.leaderboards.board import Board

BUILDERS = Registry("leaderboard builder")
BUILDERS.register(
    "success",
    "vlamergebench.leaderboards.success:BOARD",
    kind="board",
    artefact="success per task/suite/overall, routing accuracy, confusion; CSV, Markdown, PNG",
)
BUILDERS.register(
    "storage",
    "vlamergebench.leaderboards.storage:BOARD",
    kind="board",
    artefact="bytes, % of dense and LoRA banks, storage-vs-success Pareto; CSV, Markdown, PNG",
)
BUILDERS.register(
    "forgetting",
    "vlamergebench.leaderboards.forgetting:BOARD",
    kind="board",
    artefact="continual R matrix, BWT, forgetting, AUC, curves; CSV, Markdown, PNG",
)
BUILDERS.register(
    "entries",
    "vlamergebench.leaderboards.entries:BOARD",
    kind="board",
    artefact="per-entry evaluation settings, reference settings, resolved configs, versions; CSV, Markdown",
)
BUILDERS.register(
    "paper",
    "vlamergebench.leaderboards.paper:BOARD",
    kind="board",
    artefact="ranked entries x suites + average + storage, best in bold; LaTeX (booktabs), Markdown, CSV",
)
BUILDERS.register(
    "findings",
    "vlamergebench.leaderboards.findings:BOARD",
    kind="board",
    artefact="published findings vs the entries testing them, decomposition, oracle lambda; CSV, Markdown",
)
BUILDERS.register(
    "page",
    "vlamergebench.leaderboards.page:build",
    kind="page",
    artefact="one static HTML page showing every leaderboard and the provenance",
)


def boards() -> list[Board]:
    """The registered boards, in registration order."""
    return [BUILDERS.load(spec.name) for spec in BUILDERS if spec.metadata.get("kind") == "board"]


def builder(name: str) -> Callable[[Results, Path], list[Path]]:
    """The function that writes builder ``name``'s files: ``(results, out_dir) -> files``."""
    target = BUILDERS.load(name)
    return target.build if BUILDERS.spec(name).metadata.get("kind") == "board" else target


def build_leaderboards(
    sources: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    builders: Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """Load the results of ``sources`` (stores, run directories, bundles) and run ``builders`` (default: all).

    The files are built in a hidden sibling of ``out_dir`` and moved into place only when every builder has
    finished, so a failed build (a full disk, a bug) leaves the previous board as it was. Text in figures
    is never read as matplotlib math text: names come from anyone's bundle.

    Returns:
        Builder name -> the files it wrote.
    """
    import matplotlib

    from vlamergebench.eval.results import load_results

    names = list(builders) if builders is not None else BUILDERS.names()
    for name in names:
        BUILDERS.spec(name)  # an unknown name raises, listing the known ones, before any work
    results = load_results(sources)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        with matplotlib.rc_context({"text.parse_math": False}):
            built = {name: builder(name)(results, staging) for name in names}
        written: dict[str, list[Path]] = {}
        for name, paths in built.items():
            written[name] = [out / path.relative_to(staging) for path in paths]
            for path, target in zip(paths, written[name], strict=True):
                os.replace(path, target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def headline_tables(out_dir: str | os.PathLike[str]) -> str:
    """The first table of each board's Markdown file present in ``out_dir``, as text for a terminal."""
    parts = []
    for board in boards():
        path = Path(out_dir) / board.markdown_file
        sections = path.read_text().split("\n## ")[1:] if path.is_file() else []
        if sections:  # each section is a heading line, a blank line and a table
            heading, table = sections[0].split("\n", 1)
            parts.append(f"\n{path.stem}: {heading}\n{table.strip()}")
    return "\n".join(parts)
