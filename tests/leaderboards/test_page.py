"""The HTML page, rendered by a real headless Chromium: what a person sees (text, tables, drawn plots)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from handmade import fill_store, make_run
from matplotlib import image

from vlamergebench.eval.store import ResultsStore
from vlamergebench.leaderboards.registry import build_leaderboards

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI") == "true":
        pytest.fail("CI must install a headless browser for this test: apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI runs this test")


def _browse(browser, page, profile, *args):
    command = [browser, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("page")
    with ResultsStore.open(root / "run") as store:
        fill_store(store)
        store.register_run(make_run("<img src=x onerror=alert(1)>"))  # a hostile name from someone's bundle
    build_leaderboards([root / "run"], root / "board", ["page"])
    return root / "board" / "leaderboard.html"


def test_chromium_shows_the_leaderboards(page, tmp_path):
    browser = _chromium()
    dom = _browse(browser, page, tmp_path / "profile-dom", "--dump-dom")
    for heading in (
        "Success leaderboard",
        "Storage leaderboard",
        "Forgetting leaderboard (continual protocol)",
        "Entries: evaluation settings and configs",
        "Provenance",
        "Confusion matrix: ties · own router",
    ):
        assert f">{heading}" in dom, heading
    nbsp = "&nbsp;"  # intervals keep together on narrow screens
    assert "<td>ties · oracle</td>" in dom and f"<td>68.8{nbsp}[39.4,{nbsp}88.1]</td>" in dom
    assert f"<td>91.7{nbsp}[64.6,{nbsp}98.5]</td>" in dom  # routing accuracy
    assert "<td>-37.5</td>" in dom  # BWT in points
    assert dom.count('src="data:image/png;base64,') == 3
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom and '<img src="x"' not in dom  # escaped, not injected
    assert '<meta name="viewport"' in dom and "<script" not in dom
    assert dom.count("<details") >= 5 and dom.count('<div class="scroll">') == dom.count("<table ")
    assert '<a href="https://arxiv.org/abs/2306.01708">TIES-Merging' in dom  # the method's paper
    assert "<td><strong>" in dom and "**" not in dom  # the paper table's best cells are bold, not asterisks
    provenance = dom.split('id="provenance"')[1]
    assert provenance.count("mujoco 3.17.0") == 1 and "<td>shared</td>" in provenance  # stated once
    assert "not a registered method here" in dom  # the hostile name gets no link


@pytest.mark.parametrize("width", [1400, 800])
def test_chromium_layout_at_desktop_and_narrow_widths(page, tmp_path, width):
    """Screenshots (kept in pytest's tmp_path, leaderboard-<width>px.png): the page fits, plots are drawn."""
    browser = _chromium()
    shot = tmp_path / f"leaderboard-{width}px.png"
    _browse(browser, page, tmp_path / "profile", f"--window-size={width},2400", f"--screenshot={shot}")
    pixels = image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, width)
    # matplotlib's first two colours (blue C0, orange C1) are drawn: the embedded plots decoded and rendered
    blue = np.all(np.abs(pixels - np.array([31, 119, 180]) / 255) < 0.08, axis=-1).sum()
    orange = np.all(np.abs(pixels - np.array([255, 127, 14]) / 255) < 0.08, axis=-1).sum()
    assert blue > 50 and orange > 50, (blue, orange)
    # the body keeps a white margin on the right: nothing overflows the viewport's width
    right_margin = pixels[:, width - 8 :, :]
    assert (right_margin > 0.97).all(), "something is drawn into the right margin"


@pytest.fixture(scope="module")
def video_page(tmp_path_factory):
    """One entry with three recorded rollouts (real MP4s of magenta frames, so the posters can be found)."""
    pytest.importorskip("imageio_ffmpeg")
    from handmade import add_recorded_episode

    root = tmp_path_factory.mktemp("video-page")
    with ResultsStore.open(root / "run") as store:
        run = make_run("mergevla")
        store.register_run(run)
        for skill, success in (("a1", True), ("a2", False), ("b1", True)):
            add_recorded_episode(store, run, skill, 0, (255, 0, 255), success=success)
    build_leaderboards([root / "run"], root / "board", ["page"])
    return root / "board" / "leaderboard.html"


def test_chromium_shows_a_strip_of_rollout_videos_per_skill(video_page, tmp_path):
    """Screenshot in pytest's tmp_path (videos-1400px.png): the posters are drawn, the MP4s are linked."""
    browser = _chromium()
    dom = _browse(browser, video_page, tmp_path / "profile-dom", "--dump-dom")
    videos = dom.split('id="videos"')[1].split('id="methods"')[0]
    assert videos.count("<video ") == 3 and videos.count('poster="data:image/jpeg;base64,') == 3
    assert [h.split("</h4>")[0] for h in videos.split("<h4>")[1:]] == [
        "a1",
        "a2",
        "b1",
    ]  # one strip per skill
    assert videos.count('class="success"') == 2 and videos.count('class="failure"') == 1
    for source in re.findall(r'<source src="([^"]+)" type="video/mp4">', videos):
        assert (video_page.parent / source).is_file(), source  # relative to the page
    assert "<script" not in dom and '<a href="#videos">Videos</a>' in dom
    shot = tmp_path / "videos-1400px.png"
    _browse(browser, video_page, tmp_path / "profile", "--window-size=1400,5000", f"--screenshot={shot}")
    pixels = image.imread(shot)[..., :3]
    magenta = np.all(np.abs(pixels - np.array([1.0, 0.0, 1.0])) < 0.1, axis=-1).sum()
    assert magenta > 3 * 5000, magenta  # three posters of 256 x 128 px, under a corner and the controls
