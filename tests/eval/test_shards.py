"""Shards of one run on the point env: each shard runs its slice once, and `combine` joins them or refuses."""

from __future__ import annotations

import functools
import shutil
import sqlite3
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evalworld  # noqa: E402

from vlamergebench.cli import main  # noqa: E402
from vlamergebench.eval.combine import CombineError, combine_stores  # noqa: E402
from vlamergebench.eval.runner import run_phase  # noqa: E402
from vlamergebench.eval.shards import Shard  # noqa: E402
from vlamergebench.eval.store import EPISODE_KEY, ResultsStore, RunRecord  # noqa: E402
from vlamergebench.eval.work import Contender, Phase, RunOptions, TaskUnit  # noqa: E402

SKILLS = ("left", "right")
EPISODES = 5
COLUMNS = ["success", "steps", "seed", "init_state_id", "routed_skill", "error"]


def _run(config=None):
    return RunRecord.create(method="controllers", method_config=config or {"gain": 1}, expert_set_id="points",
                            skills=SKILLS, protocol="one_shot", routing_mode="oracle", router=None,
                            run_seed=3)  # fmt: skip


def _units():
    return tuple(TaskUnit(s, "points", s, evalworld.ENV_ID, {"task": s}) for s in SKILLS)


def _evaluate(where, shard=None, episodes=EPISODES, config=None, units=None, record_videos=0):
    contender = Contender(functools.partial(evalworld.Controllers, SKILLS))
    with ResultsStore.open(where) as store:
        run_phase(store, _run(config), Phase(1, units or _units(), episodes), contender,
                  RunOptions(progress=False, shard=shard, record_videos=record_videos))  # fmt: skip
        return store.episodes_frame()


def _shards(tmp_path, count=3):
    stores = [tmp_path / f"shard{i}" for i in range(count)]
    for i, store in enumerate(stores):
        _evaluate(store, Shard(i, count))
    return stores


def test_shards_cover_the_plan_once_and_combine_equals_the_whole_run(tmp_path, capsys):
    whole = _evaluate(tmp_path / "whole").set_index(list(EPISODE_KEY))
    stores = _shards(tmp_path)
    parts = []
    for store in stores:
        with ResultsStore.open(store, readonly=True) as opened:
            parts.append(opened.episodes_frame().set_index(list(EPISODE_KEY)))
    sizes = sorted(len(part) for part in parts)
    assert (
        sizes == [3, 3, 4] and sum(sizes) == 2 * EPISODES
    )  # 10 (task, episode) pairs in 3 near-equal slices
    for i, part in enumerate(parts):  # a shard's slice is contiguous: whole tasks' runs of episode indices
        assert all(set(part.index) & set(other.index) == set() for other in parts[i + 1 :])

    assert _evaluate(stores[1], Shard(1, 3)).shape[0] == len(parts[1])  # rerunning a shard adds nothing

    assert main(["combine", *map(str, stores), "--out", str(tmp_path / "all")]) == 0
    assert "combined 3 stores (shards 0/3, 1/3, 2/3): 1 runs, 10 episodes" in capsys.readouterr().out
    with ResultsStore.open(tmp_path / "all", readonly=True) as combined:
        rows = combined.episodes_frame().set_index(list(EPISODE_KEY))
        assert len(combined.runs_frame()) == 1
    assert rows.loc[whole.index, COLUMNS].equals(whole[COLUMNS])  # same episodes, same outcomes


def _combine_error(sources, out):
    with pytest.raises(CombineError) as caught:
        combine_stores(sources, out)
    assert not Path(out).exists()  # a refused combine writes nothing
    return str(caught.value)


def test_combine_refuses_missing_shards_gaps_duplicates_and_other_configurations(tmp_path):
    stores = _shards(tmp_path)
    out = tmp_path / "out"
    assert "shard(s) 2/3 of the plan are missing" in _combine_error(stores[:2], out)

    copy = tmp_path / "copy0"
    shutil.copytree(stores[0], copy)
    assert "stored in more than one store" in _combine_error([stores[0], copy, *stores[1:]], out)

    holey = tmp_path / "holey"
    shutil.copytree(stores[2], holey)
    with sqlite3.connect(holey / "results.sqlite") as db:
        db.execute("DELETE FROM episodes WHERE episode_index = (SELECT max(episode_index) FROM episodes)")
    message = _combine_error([*stores[:2], holey], out)
    assert "1 planned episode(s) are missing" in message and "rerun the shard command" in message

    versions = tmp_path / "versions"
    shutil.copytree(stores[2], versions)
    with sqlite3.connect(versions / "results.sqlite") as db:
        db.execute(
            'UPDATE episodes SET versions_json = replace(versions_json, \'"torch":"\', \'"torch":"0.0-\')'
        )
    message = _combine_error([*stores[:2], versions], out)
    assert "different package versions: torch: " in message and "0.0-" in message

    other_config = tmp_path / "other_config"
    _evaluate(other_config, Shard(2, 3), config={"gain": 2})
    message = _combine_error([*stores[:2], other_config], out)
    assert "with different configurations: method_config_hash" in message

    other_plan = tmp_path / "other_plan"
    _evaluate(other_plan, Shard(2, 3), episodes=EPISODES + 1)
    assert "episode plans differ: run controllers-oracle-one_shot-" in _combine_error(
        [*stores[:2], other_plan], out
    )
    assert "episodes_per_task 5" in _combine_error([*stores[:2], other_plan], out)

    other_count = tmp_path / "other_count"
    _evaluate(other_count, Shard(1, 2))
    assert "shard counts differ" in _combine_error([*stores[:2], other_count], out)


def test_unsharded_halves_combine_and_a_gap_without_a_plan_is_refused(tmp_path, capsys):
    left, right = _units()
    _evaluate(tmp_path / "left", units=(left,))
    _evaluate(tmp_path / "right", units=(right,))
    assert (
        main(["combine", str(tmp_path / "left"), str(tmp_path / "right"), "--out", str(tmp_path / "all")])
        == 0
    )
    assert "combined 2 stores: 1 runs, 10 episodes" in capsys.readouterr().out

    with sqlite3.connect(tmp_path / "right" / "results.sqlite") as db:
        db.execute("DELETE FROM episodes WHERE episode_index = 2")
    assert (
        main(["combine", str(tmp_path / "left"), str(tmp_path / "right"), "--out", str(tmp_path / "b")]) == 1
    )
    error = capsys.readouterr().err
    assert error.startswith("vlamergebench combine: error: episodes of ") and "gaps at indices [2]" in error


def test_combine_brings_each_shards_videos_and_refuses_a_missing_file(tmp_path):
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, store in enumerate(shards):
        _evaluate(store, Shard(i, 2), record_videos=3)
    summary = combine_stores(shards, tmp_path / "all")
    assert summary.episodes == 2 * EPISODES
    with ResultsStore.open(tmp_path / "all", readonly=True) as store:
        videos = store.videos_frame()
    assert sorted(zip(videos["skill"], videos["episode_index"], strict=True)) == [
        (skill, k) for skill in SKILLS for k in range(3)
    ]
    for path in videos["path"]:  # each file copied beside the combined store from the shard that ran it
        (origin,) = [shard / path for shard in shards if (shard / path).is_file()]
        assert (tmp_path / "all" / path).read_bytes() == origin.read_bytes()

    next((shards[1] / "videos").rglob("*.mp4")).unlink()
    with pytest.raises(
        CombineError, match=r"shard1/results.sqlite: video videos/\S+\.mp4 of episode .* is missing"
    ):
        combine_stores(shards, tmp_path / "again")
    assert not (tmp_path / "again").exists()


def test_shard_flag_is_checked():
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(ValueError, match=f"--shard '{bad}': expected i/N with 0 <= i < N"):
            Shard.parse(bad)
    assert Shard.parse("2/5") == Shard(2, 5)
