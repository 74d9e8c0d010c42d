"""``vlamergebench export --format parquet``: real Parquet files and a Hub dataset card, read back by the
leaderboard into the same board; tampered exports refused with one line."""

from __future__ import annotations

import filecmp
import os
import re

import pytest
import yaml
from handmade import add_recorded_episode, make_run

from vlamergebench.cli import main
from vlamergebench.eval.export import COLUMN_DESCRIPTIONS, RUN_COLUMNS
from vlamergebench.eval.store import ResultsStore, table_columns
from vlamergebench.leaderboards.registry import build_leaderboards

pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("imageio_ffmpeg")


@pytest.fixture(scope="module")
def exported(store_dir, tmp_path_factory):
    """The hand-made store's export (the board built from that store is the session's ``built``)."""
    out = tmp_path_factory.mktemp("export") / "export"
    assert main(["export", str(store_dir), "--format", "parquet", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A store of one run with three recorded rollouts (real MP4s), and its export."""
    root = tmp_path_factory.mktemp("recorded")
    with ResultsStore.open(root / "run") as store:
        run = make_run("mergevla")
        store.register_run(run)
        for skill, success in (("a1", True), ("a2", False), ("b1", True)):
            add_recorded_episode(store, run, skill, 0, (200, 30, 200), success=success)
    assert main(["export", str(root / "run"), "--format", "parquet", "--out", str(root / "export")]) == 0
    return root / "run", root / "export"


def _front_matter(card):
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_the_export_is_parquet_plus_a_hub_dataset_card(recorded):
    store_dir, export = recorded
    card = (export / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["license"] == "cc-by-4.0" and meta["task_categories"] == ["robotics"]
    assert {"vlamergebench", "model-merging", "robotics"} <= set(meta["tags"])
    assert meta["size_categories"] == ["n<1K"] and meta["pretty_name"] == "vlamergebench results: mergevla"
    configs = {config["config_name"]: config for config in meta["configs"]}
    assert list(configs) == ["episodes", "runs", "storage", "videos"] and configs["episodes"]["default"]
    for name, config in configs.items():
        (files,) = config["data_files"]
        assert files["split"] == "train" and (export / files["path"]).is_file(), name
        columns = pq.read_schema(export / files["path"]).names
        assert columns == [c for c, _, _ in table_columns()[name]] + (
            list(RUN_COLUMNS) * (name == "episodes")
        )
        for column in columns:  # every column is described in the card, under its table
            assert f"| `{column}` |" in card.split(f"### `{name}`")[1].split("###")[0], (name, column)
            assert column in COLUMN_DESCRIPTIONS[name]
    episodes = pq.read_table(export / "data/episodes.parquet").to_pandas()
    with ResultsStore.open(store_dir, readonly=True) as store:
        stored = store.episodes_frame()
    assert len(episodes) == len(stored) == 3 and episodes["success"].tolist() == stored["success"].tolist()
    assert set(episodes["method"]) == {"mergevla"}  # the run's identity rides along each row
    videos = pq.read_table(export / "data/videos.parquet").to_pandas()
    assert sorted(videos["skill"]) == ["a1", "a2", "b1"]
    for path in videos["path"]:  # the MP4s come along, byte for byte
        assert filecmp.cmp(store_dir / path, export / path, shallow=False)
    made_by = f"vlamergebench export {store_dir} --format parquet --out {export} --license cc-by-4.0"
    assert f"Made by: `{made_by}`" in card
    assert "| `mergevla-oracle-one_shot-" in card and "3 recorded, 3 MP4 file(s) in `videos/`" in card


def _normalised_page(board, source):
    text = (board / "leaderboard.html").read_text()
    text = text.replace(os.path.relpath(source, board), "SOURCE").replace(str(source), "SOURCE")
    return re.sub(r"Built \d{4}-\d\d-\d\d \d\d:\d\d UTC", "Built", text)


def test_the_board_built_from_the_export_equals_the_board_built_from_the_store(built, store_dir, exported):
    from_store = built[0]
    from_export = exported.parent / "board"
    build_leaderboards([exported], from_export)
    names = sorted(os.listdir(from_store))
    assert names == sorted(os.listdir(from_export)) and len(names) > 20
    for name in names:
        if name != "leaderboard.html":  # every CSV, Markdown, LaTeX, PNG and SVG file, byte for byte
            assert filecmp.cmp(from_store / name, from_export / name, shallow=False), name
    assert _normalised_page(from_store, store_dir) == _normalised_page(from_export, exported)


def test_videos_read_back_from_the_export_play_its_own_copies(recorded, tmp_path):
    from vlamergebench.eval.results import load_results
    from vlamergebench.leaderboards.page import rollout_videos

    store_dir, export = recorded
    from_store, from_export = load_results([store_dir]), load_results([export])
    dropped = ["source", "video_file"]
    assert from_store.videos.drop(columns=dropped).equals(from_export.videos.drop(columns=dropped))
    assert all(file.startswith(str(export.resolve())) for file in from_export.videos["video_file"])
    page_store = rollout_videos(from_store, tmp_path).replace(os.path.relpath(store_dir, tmp_path), "SOURCE")
    page_export = rollout_videos(from_export, tmp_path).replace(os.path.relpath(export, tmp_path), "SOURCE")
    assert page_store == page_export and page_export.count('<source src="SOURCE/videos/') == 3


def _tamper(export, tmp_path, table, change):
    """A copy of ``export`` whose ``table`` went through ``change(pyarrow table) -> table``."""
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(export, copy)
    path = copy / "data" / f"{table}.parquet"
    pq.write_table(change(pq.read_table(path)), path)
    return copy


@pytest.mark.parametrize(
    ("table", "change", "message"),
    [
        (
            "episodes",
            lambda t: t.drop_columns(["success"]),
            r"episodes.parquet: missing columns \['success'\]",
        ),
        (
            "runs",
            lambda t: t.append_column("note", t.column("method")),
            r"runs.parquet: unknown columns \['note'\]",
        ),
        (
            "episodes",
            lambda t: t.set_column(t.schema.get_field_index("success"), "success", t.column("method")),
            "episodes.parquet: column success is string, expected int64",
        ),
        (
            "episodes",
            lambda t: t.set_column(
                t.schema.get_field_index("steps"), "steps", t.column("steps").cast("int32")
            ),
            None,  # a narrower integer type is cast, not refused
        ),
        (
            "episodes",
            lambda t: t.set_column(t.schema.get_field_index("method"), "method", t.column("suite")),
            r"episodes.parquet: episodes of run \S+ give \['method'\] other than runs.parquet does",
        ),
        (
            "episodes",
            lambda t: t.set_column(
                t.schema.get_field_index("success"),
                "success",
                __import__("pyarrow").compute.add(t.column("success"), 1),
            ),
            "episodes.parquet: rows break the store's constraints",
        ),
        (
            "videos",
            lambda t: t.set_column(
                t.schema.get_field_index("path"),
                "path",
                __import__("pyarrow").array(["../../etc/passwd.mp4"] * 3),
            ),
            r"video path '../../etc/passwd.mp4'",
        ),
    ],
    ids=["missing-column", "unknown-column", "wrong-type", "narrower-int", "run-disagrees", "check", "path"],
)
def test_a_tampered_export_is_refused_with_one_line(recorded, tmp_path, capsys, table, change, message):
    tampered = _tamper(recorded[1], tmp_path, table, change)
    code = main(["leaderboard", str(tampered), "--out", str(tmp_path / "board"), "--only", "entries"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0, err
        return
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert err.startswith(f"vlamergebench leaderboard: error: {tampered}")


def test_bad_export_input_is_one_line(recorded, tmp_path, capsys):
    store_dir, export = recorded
    cases = [
        (["export", str(tmp_path / "nothing"), "--format", "parquet", "--out", str(tmp_path / "a")],
         "no results store here"),
        (["export", str(store_dir), "--format", "parquet", "--out", str(export)], "already exists"),
        (["export", str(store_dir), "--format", "parquet", "--out", str(tmp_path / "b"), "--license", "a b"],
         "--license 'a b'"),
    ]  # fmt: skip
    for command, message in cases:
        assert main(command) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    for name in ("episodes", "runs", "storage"):
        (broken / "data" / f"{name}.parquet").write_bytes(b"not parquet at all")
    assert main(["leaderboard", str(broken), "--out", str(tmp_path / "board")]) == 1
    err = capsys.readouterr().err
    assert "episodes.parquet: not a readable Parquet file" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit):  # an unknown format is refused by the parser, naming the choices
        main(["export", str(store_dir), "--format", "csv", "--out", str(tmp_path / "c")])
    assert "argument --format: invalid choice: 'csv'" in capsys.readouterr().err
