"""The results store: real SQLite files, uniqueness, schema checks, untrusted files refused."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from vlamergebench.eval import store as store_module
from vlamergebench.eval.store import (
    EpisodeRecord,
    ResultsStore,
    RunRecord,
    StorageRecord,
    StoreError,
    VideoRecord,
)
from vlamergebench.provenance import config_hash, episode_seed


def _run(**changes):
    fields = {
        "method": "ties",
        "method_config": {"k": 0.2},
        "expert_set_id": "set1",
        "skills": ("a", "b"),
        "protocol": "one_shot",
        "routing_mode": "oracle",
        "router": None,
        "run_seed": 0,
    }
    return RunRecord.create(**{**fields, **changes})


def _episode(run, k=0, **changes):
    fields = {
        "run_id": run.run_id,
        "admission_step": 2,
        "skill": "a",
        "suite": "s",
        "task": "t",
        "env_id": "e-v0",
        "episode_index": k,
        "init_state_id": k,
        "seed": episode_seed(0, "a", k),
        "success": True,
        "steps": 10,
        "wall_s": 0.5,
        "versions": {"mujoco": "3.17.0"},
        "git_rev": "abc",
    }
    return EpisodeRecord(**{**fields, **changes})


def test_run_ids_hash_every_identity_field():
    base = _run()
    assert base.run_id.startswith("ties-oracle-one_shot-")
    variants = [
        _run(method_config={"k": 0.3}),
        _run(run_seed=1),
        _run(skills=("b", "a")),
        _run(expert_set_id="x"),
        _run(routing_mode="named", router="text"),
        _run(protocol="continual"),
        _run(settings={"max_steps": 8}),
    ]
    assert len({base.run_id, *(v.run_id for v in variants)}) == 8
    assert base.method_config_hash == config_hash({"k": 0.2}) == _run().method_config_hash
    with pytest.raises(StoreError, match="protocol must be one of"):
        _run(protocol="sometimes")
    with pytest.raises(StoreError, match="router name is needed"):
        _run(routing_mode="method", router=None)


def test_episodes_are_stored_once_and_read_back(tmp_path):
    run = _run()
    with ResultsStore.open(tmp_path) as store:
        store.register_run(run)
        store.register_run(run)  # same run again: fine
        assert store.add_episode(_episode(run)) is True
        assert store.add_episode(_episode(run, success=False)) is False  # the first row stands
        assert store.add_episode(_episode(run, k=1, error="boom", success=False)) is True
        assert store.finished_episodes(run.run_id) == {
            (run.run_id, 2, "a", "e-v0", "", "t", 0): (True, False),
            (run.run_id, 2, "a", "e-v0", "", "t", 1): (False, True),
        }
        with pytest.raises(StoreError, match="other settings"):
            store.register_run(dataclasses.replace(run, method_config={"k": 0.9}))
        with pytest.raises(sqlite3.IntegrityError):  # an episode of an unknown run
            store.add_episode(_episode(_run(run_seed=5)))
    assert (tmp_path / "results.sqlite").is_file()
    with ResultsStore.open(tmp_path, readonly=True) as store:
        rows = store.episodes_frame()
        assert list(rows["success"]) == [1, 0] and list(rows["method"]) == ["ties", "ties"]
        assert rows["versions_json"][0] == '{"mujoco":"3.17.0"}'
        assert store.runs_frame()["skills"][0] == ("a", "b")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.add_episode(_episode(run, k=5))


def test_storage_figures_are_idempotent(tmp_path):
    run = _run()
    record = StorageRecord(
        run.run_id,
        2,
        total_bytes=100,
        dense_bank_bytes=400,
        lora_bank_bytes=200,
        breakdown={"base": 60, "heads": 40},
    )
    with ResultsStore.open(tmp_path) as store:
        store.register_run(run)
        store.add_storage(record)
        store.add_storage(record)
        with pytest.raises(StoreError, match="differs"):
            store.add_storage(dataclasses.replace(record, total_bytes=101))
        assert store.storage_frame()["total_bytes"].tolist() == [100]


def test_foreign_or_altered_files_are_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="not an SQLite results store"):
        ResultsStore.open(junk, readonly=True)
    with pytest.raises(StoreError, match="no results store here"):
        ResultsStore.open(tmp_path / "missing", readonly=True)

    with ResultsStore.open(tmp_path / "old"):
        pass
    db = sqlite3.connect(tmp_path / "old" / "results.sqlite")
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema version 99, this vlamergebench reads versions 1, 2"):
        ResultsStore.open(tmp_path / "old", readonly=True)

    with ResultsStore.open(tmp_path / "trigger"):
        pass
    db = sqlite3.connect(tmp_path / "trigger" / "results.sqlite")
    db.execute("CREATE VIEW sneaky AS SELECT 1")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match=r"extra \['sneaky'\]"):
        ResultsStore.open(tmp_path / "trigger", readonly=True)

    other = sqlite3.connect(tmp_path / "other.sqlite")
    other.execute("CREATE TABLE t (x)")
    other.close()
    with pytest.raises(StoreError, match="schema version 0"):
        ResultsStore.open(tmp_path / "other.sqlite")


def test_copy_is_a_single_consistent_file(tmp_path):
    run = _run()
    with ResultsStore.open(tmp_path / "live") as store:
        store.register_run(run)
        store.add_episode(_episode(run))
        copy = store.copy_to(tmp_path / "copy.sqlite")
    with ResultsStore.open(copy, readonly=True) as snapshot:
        snapshot.check_integrity()
        assert len(snapshot.episodes_frame()) == 1
    assert not (tmp_path / "copy.sqlite-wal").exists()


def test_seeds_pool_into_one_entry_only_with_equal_settings(tmp_path):
    from vlamergebench.eval.results import load_results

    with ResultsStore.open(tmp_path / "same") as store:
        for seed in (0, 1):
            run = _run(run_seed=seed, settings={"max_steps": 100})
            store.register_run(run)
            store.add_episode(_episode(run))
    assert len(load_results([tmp_path / "same"]).episodes) == 2
    with ResultsStore.open(tmp_path / "mixed") as store:
        for seed, cap in ((0, 100), (1, 50)):
            run = _run(run_seed=seed, settings={"max_steps": cap})
            store.register_run(run)
            store.add_episode(_episode(run))
    with pytest.raises(StoreError, match=r"differ in evaluation settings.*max_steps\":100.*max_steps\":50"):
        load_results([tmp_path / "mixed"])


def _version_1_store(path):
    """An empty store as vlamergebench wrote it before videos (schema version 1)."""
    run = _run()
    db = sqlite3.connect(path, isolation_level=None)
    for statement in filter(str.strip, store_module._SCHEMA.split(";")):  # the version-1 tables, unchanged
        db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.close()
    return run


def test_a_version_1_store_is_read_as_it_is_and_upgraded_when_opened_writable(tmp_path):
    path = tmp_path / "old.sqlite"
    run = _version_1_store(path)
    with ResultsStore.open(path, readonly=True) as store:  # a bundle from an older vlamergebench
        assert store.schema_version == 1
        assert store.videos_frame().empty and list(store.videos_frame().columns) == list(
            store_module.VIDEO_COLUMNS
        )
        assert store.table_rows("videos") == (list(store_module.VIDEO_COLUMNS), [])
    with ResultsStore.open(path) as store:
        assert store.schema_version == 2
        store.register_run(run)
        episode = _episode(run)
        video = VideoRecord(episode.key, "videos/x.mp4", 3, 10.0, 128, 64, "agentview_image,wrist_image", 99,
                            "0" * 64, b"\xff\xd8jpeg")  # fmt: skip
        assert store.add_episode(episode, video=video)
        assert store.videos_frame()["path"].tolist() == ["videos/x.mp4"]
    with ResultsStore.open(path, readonly=True) as store:
        assert store.schema_version == 2 and len(store.episodes_frame()) == 1
        assert bytes(store.videos_frame()["poster_jpeg"].iloc[0]) == b"\xff\xd8jpeg"


def test_a_video_row_commits_with_its_episode_and_follows_a_replaced_episode(tmp_path):
    run = _run()

    def video(k, path):
        key = _episode(run, k=k).key
        return VideoRecord(key, path, 5, 10.0, 64, 64, "agentview_image", 10, "0" * 64, b"j")

    lost = "infrastructure: worker process 1 died (exit code -9) during this episode"
    with ResultsStore.open(tmp_path) as store:
        store.register_run(run)
        assert store.add_episode(_episode(run), video=video(0, "videos/a.mp4"))
        assert not store.add_episode(_episode(run), video=video(0, "videos/b.mp4"))
        assert store.videos_frame()["path"].tolist() == ["videos/a.mp4"]  # a second copy never lands
        # an infrastructure error is rerun; its video row goes with it (here: the rerun recorded none)
        assert store.add_episode(_episode(run, k=1, error=lost), video=video(1, "videos/c.mp4"))
        assert store.add_episode(_episode(run, k=1))
        assert store.videos_frame()["path"].tolist() == ["videos/a.mp4"]
        with pytest.raises(StoreError, match="belongs to episode"):
            store.add_episode(_episode(run, k=2), video=video(0, "videos/d.mp4"))
        bad = dataclasses.replace(video(3, "videos/e.mp4"), frames=0)
        with pytest.raises(sqlite3.IntegrityError):  # a CHECK constraint; nothing of the episode is kept
            store.add_episode(_episode(run, k=3), video=bad)
        assert sorted(store.episodes_frame()["episode_index"]) == [0, 1]
