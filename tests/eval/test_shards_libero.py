"""`run --shard` on the real LIBERO simulator with a real tiny expert set, two shards joined by `combine`
and ranked as one leaderboard entry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinyexperts import make_expert_set  # noqa: E402

from vlamergebench.cli import main  # noqa: E402
from vlamergebench.eval.store import ResultsStore  # noqa: E402


def test_two_libero_shards_combine_into_one_entry(tmp_path, capsys):
    pytest.importorskip("libero.libero")
    experts = make_expert_set(tmp_path / "tiny")
    common = ["run", "--method", "ta", "--experts", str(experts), "--select", "object_0", "--episodes", "2",
              "--max-steps", "8", "--workers", "1", "--no-progress"]  # fmt: skip
    for index in (0, 1):
        assert main([*common, "--shard", f"{index}/2", "--out", str(tmp_path / f"s{index}")]) == 0
        assert "1 episodes (1 run now, 0 resumed)" in capsys.readouterr().out
    assert main(["combine", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "all")]) == 0
    assert "combined 2 stores (shards 0/2, 1/2): 1 runs, 2 episodes" in capsys.readouterr().out
    with ResultsStore.open(tmp_path / "all", readonly=True) as store:
        episodes = store.episodes_frame()
    assert sorted(episodes["episode_index"]) == [0, 1] and (episodes["steps"] == 8).all()
    assert main(["leaderboard", str(tmp_path / "all"), "--out", str(tmp_path / "board")]) == 0
    assert "| ta · oracle | oracle | 1 | 1 | 2 |" in capsys.readouterr().out  # one entry of both shards
