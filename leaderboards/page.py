"""The HTML page: one static, self-contained file showing every leaderboard and the runs' provenance.

It recomputes its tables and figures from the results through the other builders' pure functions (``compute``,
``display``, ``figure``) rather than reading their output files, so builders share no state and run in any
order. Figures are embedded as PNG data URIs and there is no script, so the page needs nothing beside itself.
Every text from the results is HTML-escaped (bundles come from anyone).

Rollout videos (``run --record-videos N``): a folded strip per entry and skill of the final model's recorded
episodes, each a ``<video>`` whose poster (the store's JPEG of the last frame) is embedded and whose MP4 is
linked by a path relative to the page, so it plays where the run's ``videos/`` folder sits beside the page as
it was built; a source without the files (a bundle) shows the posters alone.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from vlamergebench.leaderboards import tables as tb

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from vlamergebench.eval.results import Results

PAGE_FILE = "leaderboard.html"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; }
body { color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 1.6em; border-bottom: 1px solid #bbb; }
div.scroll { overflow-x: auto; max-width: 100%; margin: 0.5em 0 1.2em; }
table.board { border-collapse: collapse; font-size: 0.88em; }
table.board th, table.board td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
table.board td { max-width: 40em; }
table.board th { background: #eee; } img { max-width: 100%; height: auto; border: 1px solid #ddd; }
details { margin: 0.3em 0; } summary { cursor: pointer; font-weight: 600; padding: 2px 0; }
nav a { margin-right: 1.2em; white-space: nowrap; } .note { color: #555; }
div.strip { display: flex; flex-wrap: wrap; gap: 0.6em; margin: 0.3em 0 0.9em; }
figure.rollout { margin: 0; font-size: 0.8em; max-width: 100%; }
figure.rollout video, figure.rollout img { height: 128px; width: auto; max-width: 100%; display: block; }
figure.rollout figcaption { max-width: 16em; overflow-wrap: anywhere; }
.success { color: #1a7f37; } .failure { color: #b42318; }
"""


def _table(frame: pd.DataFrame) -> str:
    """A table inside a box that scrolls sideways, so a wide table never widens the page."""
    table = frame.map(_keep_together).to_html(
        index=False, escape=True, na_rep=tb.MISSING, classes="board", border=0
    )
    # Markdown bold (the paper table's best cells) becomes <strong>; the text inside is already escaped
    table = _MARKDOWN_BOLD.sub(r"<strong>\1</strong>", table)
    return f'<div class="scroll">{table}</div>'


_MARKDOWN_BOLD = re.compile(r"\*\*([^*<>]+)\*\*")


_INTERVAL = re.compile(r"(?<=\d) \[|, (?=[-+]?\d[\d.]*\])|\] (?=p=)")


def _keep_together(value: object) -> object:
    """``68.8 [39.4, 88.1]`` with no-break spaces: a narrow column wraps between cells, never inside one."""
    return (
        _INTERVAL.sub(lambda m: m.group(0).replace(" ", "\u00a0"), value) if isinstance(value, str) else value
    )


def _folded(summary: str, content: str, open_: bool = False) -> str:
    """A ``<details>`` block (folds without script)."""
    return (
        f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>\n{content}\n</details>"
    )


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
    if not sections:
        parts.append("<p>No rows in these results.</p>")
    for n, (heading, frame) in enumerate(sections.items()):
        if n == 0:  # the headline table stays open; the rest fold
            parts += [f"<h3>{html.escape(heading)}</h3>", _table(frame)]
        else:
            parts.append(_folded(heading, _table(frame)))
    if fig is not None:
        parts.append(_folded(f"Figure: {title}", _image(fig, title), open_=True))
    return "\n".join(parts)


def shared_versions(results: Results) -> dict[str, str]:
    """Package versions every episode of every run shares (stated once on the page)."""
    tables = [json.loads(text) for text in set(results.episodes["versions_json"])]
    if not tables:
        return {}
    return {k: v for k, v in tables[0].items() if all(t.get(k) == v for t in tables[1:])}


def provenance(results: Results) -> pd.DataFrame:
    """One row per run: identity, seed, episodes, the versions not shared by all runs, git revisions."""
    import pandas as pd

    shared = shared_versions(results)
    rows = []
    for run in results.runs.itertuples():
        mine = results.episodes[results.episodes["run_id"] == run.run_id]
        versions = [json.loads(text) for text in sorted(set(mine["versions_json"]))]
        own = "; ".join(
            ", ".join(f"{k} {v}" for k, v in sorted(d.items()) if shared.get(k) != v) for d in versions
        )
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
                "other versions": own.strip("; ") or "shared",
                "git": ", ".join(sorted(set(mine["git_rev"]))),
                "source": run.source,
            }
        )
    return pd.DataFrame(rows)


def methods(results: Results) -> str:
    """A list of the methods on the board with links to their papers (from the method registry)."""
    from vlamergebench.merge_methods.registry import METHODS

    items = []
    for name in sorted(set(results.runs["method"])):
        if name not in METHODS:
            items.append(f"<li><code>{html.escape(name)}</code>: not a registered method here</li>")
            continue
        meta = METHODS.spec(name).metadata
        paper, arxiv = meta.get("paper"), meta.get("arxiv")
        if arxiv:
            url = f"https://arxiv.org/abs/{html.escape(arxiv)}"
            cite = f'<a href="{url}">{html.escape(paper or arxiv)}</a> (arXiv:{html.escape(arxiv)})'
        else:
            cite = html.escape(paper or "no paper (a reference point of this benchmark)")
        items.append(f"<li><code>{html.escape(name)}</code>: {cite}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def _rollout(video: Any, out_dir: Path) -> str:
    """One recorded episode: the video (or its poster alone, without the MP4), with what happened."""
    poster = "data:image/jpeg;base64," + base64.b64encode(bytes(video.poster_jpeg)).decode("ascii")
    outcome = (
        '<span class="success">success</span>' if video.success else '<span class="failure">failure</span>'
    )
    variant = f" · {html.escape(video.variant)}" if video.variant else ""
    caption = f"{html.escape(video.task)}{variant} · episode {int(video.episode_index)} · {outcome}"
    size = f'width="{int(video.width)}" height="{int(video.height)}"'
    alt = html.escape(f"{video.task}, episode {int(video.episode_index)}", quote=True)
    if video.video_file:
        link = html.escape(quote(os.path.relpath(video.video_file, out_dir)), quote=True)
        media = (
            f'<video controls preload="none" {size} poster="{poster}" title="{alt}">'
            f'<source src="{link}" type="video/mp4"><a href="{link}">{alt}</a></video>'
        )
    else:
        media = f'<img src="{poster}" alt="{alt}" title="poster only: the MP4 is not with this source">'
    return f'<figure class="rollout">{media}<figcaption>{caption}</figcaption></figure>'


def rollout_videos(results: Results, out_dir: Path) -> str:
    """Per entry (folded after the first), a strip per skill of the final model's videos; "" when none."""
    from vlamergebench.eval.metrics import ENTRY_COLUMNS
    from vlamergebench.eval.store import EPISODE_KEY

    videos = results.videos
    if videos is None or videos.empty:
        return ""
    runs = results.runs.set_index("run_id")
    final = videos[
        videos["admission_step"].to_numpy() == videos["run_id"].map(runs["skills"].map(len)).to_numpy()
    ]
    outcomes = results.episodes[[*EPISODE_KEY, "success"]]
    final = final.merge(outcomes, on=list(EPISODE_KEY), how="inner")
    labels = tb.entry_labels(results)
    final = final.assign(
        entry=[labels[tuple(runs.loc[r, c] for c in ENTRY_COLUMNS)] for r in final["run_id"]]
    )
    parts = []
    for n, (entry, mine) in enumerate(final.groupby("entry", sort=True)):
        skills = runs.loc[mine["run_id"].iloc[0], "skills"]
        strips = []
        for skill in [s for s in skills if s in set(mine["skill"])]:
            rows = mine[mine["skill"] == skill].sort_values(["variant", "task", "run_id", "episode_index"])
            figures = "".join(_rollout(video, out_dir) for video in rows.itertuples())
            strips.append(f'<h4>{html.escape(skill)}</h4><div class="strip">{figures}</div>')
        parts.append(_folded(f"{entry}: {len(mine)} recorded episodes", "\n".join(strips), open_=n == 0))
    note = (
        "Recorded with run --record-videos N: the first N episodes of each task, one frame per observation "
        "the policy read (one per action chunk), cameras side by side at the policy's input resolution. "
        "Posters show each episode's last frame."
    )
    return (
        '<h2 id="videos">Rollout videos</h2>' + f'<p class="note">{html.escape(note)}</p>' + "\n".join(parts)
    )


def build(results: Results, out_dir: Path) -> list[Path]:
    """Write ``leaderboard.html`` into ``out_dir``: every registered board, then the provenance."""
    from vlamergebench.leaderboards.registry import boards

    sections, links = [], []
    for board in boards():
        frames = board.compute(results)
        sections.append(
            _section(board.name, board.title, board.display(frames), board.plot(frames), board.page_note)
        )
        links.append(f'<a href="#{board.name}">{html.escape(board.name.capitalize())}</a>')
    videos = rollout_videos(results, out_dir)
    if videos:
        links.append('<a href="#videos">Videos</a>')
    body = [
        "<h1>vlamergebench leaderboard</h1>",
        "<nav>" + "".join(links) + '<a href="#methods">Methods</a><a href="#provenance">Provenance</a></nav>',
        *sections,
        videos,
        '<h2 id="methods">Methods and papers</h2>',
        methods(results),
        '<h2 id="provenance">Provenance</h2>',
        "<p>Package versions shared by every run: "
        + html.escape(", ".join(f"{k} {v}" for k, v in sorted(shared_versions(results).items())) or "none")
        + ".</p>",
        _folded("Runs (one row each)", _table(provenance(results))),
        f'<p class="note">Built {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())} from '
        f"{html.escape(', '.join(results.sources))}.</p>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>vlamergebench leaderboard</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    path = out_dir / PAGE_FILE
    path.write_text(page, encoding="utf-8")
    return [path]
