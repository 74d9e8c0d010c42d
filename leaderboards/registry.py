"""The leaderboard builders, registered in one place (``vlamergebench/registry.py``'s pattern).

A builder is a function ``build(results, out_dir) -> list[Path]``: it reads only the
:class:`~vlamergebench.eval.results.Results` of the stores and writes its own files. Builders share no state,
so any subset runs in any order. Adding an artefact is one ``register`` call here and one module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vlamergebench.registry import Registry

BUILDERS = Registry("leaderboard builder")
BUILDERS.register(
    "success",
    "vlamergebench.leaderboards.success:build",
    artefact="success per task/suite/overall, routing accuracy, confusion; CSV, Markdown, PNG",
)
BUILDERS.register(
    "storage",
    "vlamergebench.leaderboards.storage:build",
    artefact="bytes, % of dense and LoRA banks, storage-vs-success Pareto; CSV, Markdown, PNG",
)
BUILDERS.register(
    "forgetting",
    "vlamergebench.leaderboards.forgetting:build",
    artefact="continual R matrix, BWT, forgetting, AUC, curves; CSV, Markdown, PNG",
)
BUILDERS.register(
    "page",
    "vlamergebench.leaderboards.page:build",
    artefact="one static HTML page showing every leaderboard and the provenance",
)


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
            built = {name: BUILDERS.load(name)(results, staging) for name in names}
        written: dict[str, list[Path]] = {}
        for name, paths in built.items():
            written[name] = [out / path.relative_to(staging) for path in paths]
            for path, target in zip(paths, written[name], strict=True):
                os.replace(path, target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
