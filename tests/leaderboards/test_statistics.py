"""Paired statistics, ranks with ties, the tolerant Pareto front and comparability, on hand-made results."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from handmade import SUITE, make_episodes
from scipy import stats

from vlamergebench.eval.store import ResultsStore, RunRecord
from vlamergebench.leaderboards import paired
from vlamergebench.leaderboards.registry import build_leaderboards


def test_paired_difference_is_the_exact_mcnemar_test_with_equal_weights():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 0])  # six pairs only A solves, one both, three neither
    b = np.array([0, 0, 0, 0, 0, 0, 0, 1, 0, 0])
    result = paired.paired_difference(a, b, np.full(10, 0.1))
    assert result.difference == pytest.approx(0.6) and (result.a_only, result.b_only, result.pairs) == (
        6,
        0,
        10,
    )
    assert result.p_value == pytest.approx(stats.binomtest(6, 6, 0.5).pvalue)  # 2 * 0.5**6
    assert 0 < result.low <= 0.6 <= result.high <= 1
    same = paired.paired_difference(a, a, np.full(10, 0.1))
    assert (same.difference, same.low, same.high, same.p_value) == (0, 0, 0, 1)


def test_a_single_disagreeing_pair_has_the_exact_p_value_one():
    """Two entries that differ in one episode of many (scipy's test needs two samples; McNemar gives 1)."""
    a = np.array([1, 0, 0, 1])
    b = np.array([0, 0, 0, 1])
    result = paired.paired_difference(a, b, np.full(4, 0.25))
    assert result.p_value == pytest.approx(stats.binomtest(1, 1, 0.5).pvalue) == 1
    assert result.difference == 0.25 and result.low <= 0.25 <= result.high
    one = paired.paired_difference(np.array([1]), np.array([0]), np.array([1.0]))
    assert one.difference == 1 and one.p_value == 1 and np.isnan(one.low) and np.isnan(one.high)


def test_pair_weights_reproduce_the_overall_rate():
    index = pd.MultiIndex.from_tuples(
        [("A", "a1", 0, 1), ("A", "a1", 1, 2), ("A", "a2", 0, 3), ("B", "b1", 0, 4)], names=paired.PAIR_KEY
    )
    weights = paired.pair_weights(index)
    assert weights.tolist() == pytest.approx([0.125, 0.125, 0.25, 0.5]) and weights.sum() == pytest.approx(1)


def test_ranks_share_a_rank_unless_separated():
    better = {("x", "z"): True}
    assert paired.ranks_with_ties(["x", "y", "z"], better) == {"x": 1, "y": 1, "z": 2}


def test_pareto_front_tolerates_storage_noise_and_needs_a_significant_success_gain():
    # b is 0.5% larger than a with the same success: within tolerance, neither dominates
    assert paired.pareto_front([1000, 1005], [0.0, 0.0], [[False, False], [False, False]]) == [True, True]
    # b is 0.5% smaller but significantly worse than a: a dominates b despite b's 5 bytes
    assert paired.pareto_front([1000, 995], [0.8, 0.0], [[False, True], [False, False]]) == [True, False]
    # the same success gap without significance: b keeps its place
    assert paired.pareto_front([1000, 995], [0.8, 0.0], [[False, False], [False, False]]) == [True, True]
    # 10% smaller at equal success dominates
    assert paired.pareto_front([1000, 900], [0.5, 0.5], [[False, False], [False, False]]) == [False, True]


def _fill(store, runs_wins, settings=None, skills=("a1", "a2", "b1")):
    for name, wins in runs_wins.items():
        run = RunRecord.create(
            method=name,
            method_config={"method": name},
            expert_set_id="set0",
            skills=("a1", "a2", "b1"),
            protocol="one_shot",
            routing_mode="oracle",
            router=None,
            run_seed=0,
            settings=(settings or {}).get(name, {}),
        )
        store.register_run(run)
        for skill in skills if name != "capped" else ("a1",):
            for record in make_episodes(run, 3, skill, wins, total=8 if name != "capped" else 2):
                store.add_episode(record)
    return SUITE


def test_comparability_zero_folding_and_paired_columns(tmp_path):
    with ResultsStore.open(tmp_path / "r") as store:
        _fill(
            store,
            {"expert_bank": 8, "good": 7, "zero_a": 0, "zero_b": 0, "capped": 2, "fast": 8},
            settings={"capped": {"max_steps": 16}, "fast": {"render_profile": "fast"}},
        )
    build_leaderboards([tmp_path / "r"], tmp_path / "out", ["success", "entries"])
    overall = pd.read_csv(tmp_path / "out" / "success_overall.csv").set_index("entry")
    for other in ("capped · oracle", "fast · oracle"):  # a step cap, decimated meshes: not ranked
        assert not overall.loc[other, "comparable"] and np.isnan(overall.loc[other, "rank"])
    assert overall.loc["expert_bank · oracle", "rank"] == overall.loc["good · oracle", "rank"] == 1
    assert overall.loc["zero_a · oracle", "rank"] == 3  # both others are significantly better (24 pairs)
    assert overall.loc["good · oracle", "vs_bank"] == pytest.approx(-1 / 8)
    assert overall.loc["good · oracle", "vs_bank_pairs"] == 24
    # 24 disagreeing pairs: 2**24 sign patterns, so scipy samples 9999 of them; none is as extreme
    assert overall.loc["zero_a · oracle", "vs_bank_p"] == pytest.approx(2 / 10_000)
    markdown = (tmp_path / "out" / "success.md").read_text()
    assert (
        "| 3 | 2 entries with no success: zero_a · oracle, zero_b · oracle | oracle | 2 | 3 | 24 |"
        in markdown
    )
    not_ranked = markdown.split("## Not ranked: evaluated under other settings")[1].split("\n## ")[0]
    assert "| capped · oracle |" in not_ranked and "capped" not in markdown.split("\n## ")[1]
    assert "| fast · oracle |" in not_ranked and "fast" not in markdown.split("\n## ")[1]
    entries = (tmp_path / "out" / "entries.md").read_text()
    assert (
        "| capped · oracle | set0 | 1 | 1 | 2 | 0-1 | 16 | policy input | full | cpu float32 | 0 |  | no: "
        "differs in tasks_covered, episodes_per_task, init_states, max_steps |" in entries
    )
    assert (
        "| fast · oracle | set0 | 2 | 3 | 8 | 0-7 | env limit | policy input | fast | cpu float32 | 0 |  "
        "| no: differs in render_profile |" in entries
    )
    assert "| expert_bank | " in entries and 'method="expert_bank"' in entries
