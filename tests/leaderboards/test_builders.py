"""Every registered builder against the hand-made store: files, numbers, plots, independence."""

from __future__ import annotations

import filecmp

import numpy as np
import pandas as pd
import pytest
from matplotlib import image

from vlamergebench.eval.metrics import wilson_interval
from vlamergebench.leaderboards.registry import BUILDERS, build_leaderboards


@pytest.mark.parametrize("name", BUILDERS.names())
def test_builder_contract(name, store_dir, built, tmp_path):
    _, written = built
    files = written[name]
    assert files and all(path.is_file() and path.stat().st_size > 0 for path in files)
    alone = build_leaderboards([store_dir], tmp_path, [name])[name]  # no builder depends on another
    assert sorted(p.name for p in alone) == sorted(p.name for p in files)
    for path in alone:
        if path.suffix in (".csv", ".md"):
            assert filecmp.cmp(path, built[0] / path.name, shallow=False), path.name
    assert list(tmp_path.iterdir()) == [] or {p.name for p in tmp_path.iterdir()} == {p.name for p in alone}


def test_unknown_builder_is_refused_before_work(store_dir, tmp_path):
    with pytest.raises(
        KeyError, match="unknown leaderboard builder 'sucess'; registered: entries, findings, forgetting"
    ):
        build_leaderboards([store_dir], tmp_path / "out", ["sucess"])
    assert not (tmp_path / "out").exists()


def test_success_numbers(built):
    out, _ = built
    overall = pd.read_csv(out / "success_overall.csv").set_index("entry")
    assert overall.loc["ties · oracle", "rate"] == pytest.approx((0.875 + 0.5) / 2)
    assert overall.loc["ties · own router", "rate"] == pytest.approx((0.75 + 0.25) / 2)
    assert overall.loc["ties · own router", "routing_accuracy"] == pytest.approx(11 / 12)
    assert np.isnan(overall.loc["ties · oracle", "routing_accuracy"])
    assert overall.loc["carve · continual · oracle", "rate"] == pytest.approx((0.625 + 1.0) / 2)  # final step
    assert (overall["episodes"] == 12).all() and list(overall["rate"]) == sorted(
        overall["rate"], reverse=True
    )
    tasks = pd.read_csv(out / "success_tasks.csv")
    a1 = tasks[(tasks["entry"] == "ties · oracle") & (tasks["task"] == "a1")].iloc[0]
    assert (a1["ci_low"], a1["ci_high"]) == pytest.approx(wilson_interval(3, 4))
    confusion = pd.read_csv(out / "success_confusion.csv")
    misrouted = confusion[(confusion["true skill"] == "a1") & (confusion["routed skill"] == "a2")]
    assert misrouted["episodes"].tolist() == [1]
    perturbed = pd.read_csv(out / "success_perturbations.csv", keep_default_na=False)
    labelled = {(r.aggregate, r.axis): r.rate for r in perturbed.itertuples()}
    assert labelled[("pooled", "")] == 0.25 and labelled[("mean_of_axes", "")] == 0.25
    assert labelled[("axis", "light")] == 0.5 and labelled[("axis", "camera")] == 0.0
    markdown = (out / "success.md").read_text()
    assert "| 1 | ties · oracle | oracle | 2 | 3 | 12 | 0 | 68.8 [" in markdown
    assert "do <a1>" not in markdown and "Confusion matrix: ties · own router" in markdown


def test_storage_numbers_and_pareto(built):
    out, _ = built
    table = pd.read_csv(out / "storage.csv").set_index("entry")
    assert table.loc["ties · oracle", "dense_bank_fraction"] == pytest.approx(1 / 3)
    assert table.loc["ties · oracle", "lora_bank_fraction"] == pytest.approx(0.5)
    assert table.loc["carve · continual · oracle", "total_bytes"] == 450  # the final admission step
    pareto = table["pareto"].to_dict()
    # ties' own-router entry has ties' storage and lower success, but not significantly lower: it stays
    assert pareto == {
        "ta · oracle": True,
        "ties · oracle": True,
        "ties · own router": True,
        "carve · continual · oracle": True,
    }
    assert "| ta · oracle | 100 B | 100 | 11.1 | 16.7 | 50 | 25.0 [" in (out / "storage.md").read_text()


def test_forgetting_numbers(built):
    out, _ = built
    summary = pd.read_csv(out / "forgetting_summary.csv")
    assert summary["entry"].tolist() == ["carve · continual · oracle"]
    row = summary.iloc[0]
    assert row["bwt"] == pytest.approx(((0.5 - 1.0) + (0.75 - 1.0)) / 2)
    assert (row["forgetting[a1]"], row["forgetting[a2]"]) == pytest.approx((0.5, 0.25))
    assert row["final_mean"] == pytest.approx(0.75) and row["status"] == "complete"
    assert row["auc"] == pytest.approx(((1.0 + 0.875) / 2 + (0.875 + 0.75) / 2) / 2)
    matrix = pd.read_csv(out / "forgetting_matrix.csv")
    assert len(matrix) == 6 and matrix["rate"].tolist() == [1.0, 0.75, 1.0, 0.5, 0.75, 1.0]
    assert (
        "BWT (points)" in (out / "forgetting.md").read_text()
        and "-37.5" in (out / "forgetting.md").read_text()
    )


@pytest.mark.parametrize("png", ["success.png", "storage_pareto.png", "forgetting_curves.png"])
def test_plots_are_real_images_with_content(built, png):
    pixels = image.imread(built[0] / png)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    colourful = np.abs(pixels[..., 0] - pixels[..., 2]) > 0.2  # markers and lines in matplotlib's colours
    assert colourful.sum() > 100


def test_incomplete_continual_entry_is_labelled(tmp_path):
    from handmade import make_episodes, make_run

    from vlamergebench.eval.store import ResultsStore

    run = make_run("carve", protocol="continual")
    with ResultsStore.open(tmp_path / "r") as store:
        store.register_run(run)
        for record in [
            *make_episodes(run, 1, "a1", 4),
            *make_episodes(run, 2, "a1", 3),
            *make_episodes(run, 2, "a2", 4),
        ]:
            store.add_episode(record)
    build_leaderboards([tmp_path / "r"], tmp_path / "out", ["forgetting"])
    summary = pd.read_csv(tmp_path / "out" / "forgetting_summary.csv")
    assert summary["status"].tolist() == ["incomplete (3 of 6 R cells missing)"] and "bwt" not in summary


def test_figures_are_200_dpi_png_and_svg_with_text(built):
    from PIL import Image

    out, written = built
    for png in ("success.png", "storage_pareto.png", "forgetting_curves.png"):
        with Image.open(out / png) as picture:
            assert picture.info["dpi"] == pytest.approx((200, 200), abs=0.1)
        svg = (out / png).with_suffix(".svg").read_text()
        assert svg.startswith("<?xml") and "<text" in svg  # labels stay text, not paths
    assert "ties · own router" in (out / "success.svg").read_text()
    storage_svg = (out / "storage_pareto.svg").read_text()
    assert "carve · continual · oracle" in storage_svg  # the key names every numbered point


def test_paper_table_latex_and_markdown_agree(built):
    out, _ = built
    tex = (out / "paper.tex").read_text()
    assert all(rule in tex for rule in ("\\toprule", "\\midrule", "\\bottomrule"))
    # carve has the best average (81.2) and B (100.0); ties the best A (87.5); ta the least storage
    assert (
        "carve \\textperiodcentered{} continual \\textperiodcentered{} oracle & 62.5 & \\textbf{100.0} & "
        in tex
    )
    assert "\\textbf{81.2}" in tex and "\\textbf{87.5}" in tex and "\\textbf{11.1}" in tex
    markdown = (out / "paper.md").read_text()
    assert "| 1 | carve · continual · oracle | 62.5 | **100.0** | **81.2** | 50.0 |" in markdown
    assert "| 1 | ta · oracle | 25.0 | 25.0 | 25.0 | **11.1** |" in markdown


def test_storage_labels_overlap_no_other_label_and_no_other_point():
    """A dense column of entries at one storage (as MergeVLA's variants sit at 43%) gets readable labels."""
    from matplotlib.text import Text

    from vlamergebench.leaderboards import comparability, storage
    from vlamergebench.leaderboards import tables as tb

    fig = tb.new_figure(6.0, 5.0)
    plot = fig.subplots()
    xs = [25.0] * 4 + [43.2] * 10 + [41.0, 52.0, 100.0]
    ys = [0.0, 0.8, 1.7, 2.5] + [0.8 + 1.25 * i for i in range(10)] + [3.3, 4.2, 91.7]
    plot.scatter(xs, ys)
    plot.set_xlim(0, 110)
    plot.set_ylim(-3, 103)
    points = {n: (x, y) for n, (x, y) in enumerate(zip(xs, ys, strict=True), start=1)}
    clusters = storage._clusters(xs, ys, list(points))
    assert len(clusters) == len(xs) - 2  # 0.0 with 0.8 and 1.7 with 2.5 share a marker at 25%
    storage._label_clusters(fig, plot, clusters, points)
    fig.draw_without_rendering()
    # Text's own extent: an annotation's extent also covers its leader line
    boxes = {text.get_text(): Text.get_window_extent(text) for text in plot.texts}
    assert len(boxes) == len(clusters)
    labels = list(boxes)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert not boxes[a].overlaps(boxes[b]), (a, b)
    for _, members in clusters:
        label = comparability.compact_ranges(members)
        for number, point in points.items():
            if number not in members:
                assert not boxes[label].contains(*plot.transData.transform(point)), (label, number)
