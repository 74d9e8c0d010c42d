"""The HTML page: one static, self-contained file showing every leaderboard and the runs' provenance.

It recomputes its tables and figures from the results through the other builders' pure functions (``compute``,
``display``, ``figure``) rather than reading their output files, so builders share no state and run in any
order. Figures are embedded as PNG data URIs and there is no script, so the page needs nothing beside itself.
Every text from the results is HTML-escaped (bundles come from anyone).
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vlamergebench.leaderboards import tables as tb

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from vlamergebench.eval.results import Results

PAGE_FILE = "leaderboard.html"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table.board { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
table.board th, table.board td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
table.board th { background: #eee; } img { max-width: 100%; border: 1px solid #ddd; }
nav a { margin-right: 1.5em; } .note { color: #555; }
"""


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, escape=True, na_rep=tb.MISSING, classes="board", border=0)


def _image(fig: Figure | None, alt: str) -> str:
    if fig is None:
        return ""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"></p>'


def _section(
    anchor: str, title: str, sections: dict[str, pd.DataFrame], fig: Figure | None, note: str
) -> str:
    parts = [f'<h2 id="{anchor}">{html.escape(title)}</h2>', f'<p class="note">{html.escape(note)}</p>']
    parts.append(_image(fig, title))
    if not sections:
        parts.append("<p>No rows in these results.</p>")
    for heading, frame in sections.items():
        parts += [f"<h3>{html.escape(heading)}</h3>", _table(frame)]
    return "\n".join(parts)


def provenance(results: Results) -> pd.DataFrame:
    """One row per run: identity, seed, episodes, the package versions and git revisions that produced it."""
    import pandas as pd

    rows = []
    for run in results.runs.itertuples():
        mine = results.episodes[results.episodes["run_id"] == run.run_id]
        versions = [json.loads(text) for text in sorted(set(mine["versions_json"]))]
        rows.append(
            {
                "run": run.run_id,
                "method": run.method,
                "config hash": run.method_config_hash,
                "expert set": run.expert_set_id,
                "protocol": run.protocol,
                "routing": run.routing_mode + (f" ({run.router})" if run.router else ""),
                "seed": run.run_seed,
                "episodes": len(mine),
                "versions": "; ".join(", ".join(f"{k} {v}" for k, v in sorted(d.items())) for d in versions),
                "git": ", ".join(sorted(set(mine["git_rev"]))),
                "source": run.source,
            }
        )
    return pd.DataFrame(rows)


def build(results: Results, out_dir: Path) -> list[Path]:
    """Write ``leaderboard.html`` into ``out_dir``: every registered board, then the provenance."""
    from vlamergebench.leaderboards.registry import boards

    sections, links = [], []
    for board in boards():
        frames = board.compute(results)
        sections.append(
            _section(board.name, board.title, board.display(frames), board.figure(frames), board.page_note)
        )
        links.append(f'<a href="#{board.name}">{html.escape(board.name.capitalize())}</a>')
    body = [
        "<h1>vlamergebench leaderboard</h1>",
        "<nav>" + "".join(links) + '<a href="#provenance">Provenance</a></nav>',
        *sections,
        '<h2 id="provenance">Provenance</h2>',
        _table(provenance(results)),
        f'<p class="note">Built {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} from '
        f"{html.escape(', '.join(results.sources))}.</p>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>vlamergebench leaderboard</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    path = out_dir / PAGE_FILE
    path.write_text(page, encoding="utf-8")
    return [path]
