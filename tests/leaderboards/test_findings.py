"""The findings board picks the entries that test each published finding by method, protocol and config."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from handmade import SKILLS, make_episodes

from vlamergebench.eval.store import ResultsStore, RunRecord
from vlamergebench.leaderboards import findings
from vlamergebench.leaderboards.registry import build_leaderboards
from vlamergebench.merge_methods.registry import make_method


def _run(method, protocol="one_shot", **overrides):
    config = {**make_method(method).config.to_dict(), **overrides}
    return RunRecord.create(
        method=method,
        method_config=config,
        expert_set_id="set0",
        skills=SKILLS,
        protocol=protocol,
        routing_mode="oracle",
        router=None,
        run_seed=0,
    )


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """bank 4/4 everywhere; lora_bank 4/4 but b1 3/4; ta 0/4 (defaults) and 2/4 (scale 0.5); ta at scale 0.5
    with another knob changed (not a sweep point); mergevla without heads 0/4; mergevla continual R =
    [[1], [.75, 1], [.5, .75, .75]]."""
    path = tmp_path_factory.mktemp("results")
    runs = {
        "bank": _run("expert_bank"),
        "lora": _run("lora_bank"),
        "ta": _run("ta"),
        "ta_half": _run("ta", scale=0.5),
        "ta_other": _run("ta", scale=0.5, task_vectors="dense"),
        "no_heads": _run("mergevla", expert_heads=False),
        "continual": _run("mergevla", protocol="continual"),
        "knots_vector": _run("mergevla_knots"),
        "continual_ta": _run("continual_ta", protocol="continual"),
    }
    rows = []
    for skill in SKILLS:
        rows += make_episodes(runs["bank"], 3, skill, 4)
        rows += make_episodes(runs["lora"], 3, skill, 3 if skill == "b1" else 4)
        rows += make_episodes(runs["ta"], 3, skill, 0)
        rows += make_episodes(runs["ta_half"], 3, skill, 2)
        rows += make_episodes(runs["ta_other"], 3, skill, 4)
        rows += make_episodes(runs["no_heads"], 3, skill, 0)
        rows += make_episodes(runs["knots_vector"], 3, skill, 3)
    for step, row in enumerate([[1.0], [0.75, 1.0], [0.5, 0.75, 0.75]], start=1):
        for skill, rate in zip(SKILLS, row, strict=False):
            rows += make_episodes(runs["continual"], step, skill, int(rate * 4))
            # only the skill admitted last succeeds: each admission erases the skills before it
            rows += make_episodes(runs["continual_ta"], step, skill, 4 if skill == SKILLS[step - 1] else 0)
    with ResultsStore.open(path) as store:
        for run in runs.values():
            store.register_run(run)
        for record in rows:
            assert store.add_episode(record)
    out = tmp_path_factory.mktemp("board")
    build_leaderboards([path], out, ["findings"])
    from vlamergebench.eval.results import load_results

    return findings.compute(load_results([path])), out


def test_each_finding_lists_the_entries_that_test_it(board):
    frames, _ = board
    table = frames["findings"]
    lora = table[table["claim"].str.startswith("LoRA bank")]
    assert lora["entry"].tolist() == ["lora_bank · oracle"]
    assert lora["rate"].iloc[0] == pytest.approx((1 + 0.75) / 2)  # suites A and B weigh equally
    assert lora["vs_bank"].iloc[0] < 0 and lora["episodes"].iloc[0] == 12
    collapse = table[table["claim"].str.startswith("TA / TIES")]
    # only TA at its defaults tests the collapse; TIES and DARE were not run and keep an empty line
    assert [e for e in collapse["entry"] if e] == [e for e in collapse["entry"] if e.startswith("ta ")]
    assert len([e for e in collapse["entry"] if e]) == 1
    assert collapse.loc[collapse["entry"] != "", "rate"].iloc[0] == 0
    heads = table[table["claim"].str.startswith("MergeVLA without")]
    assert heads["entry"].str.len().gt(0).sum() == 1  # the no-heads run; defaults and depth 3 were not run


def test_mergevla_table_and_continual_baselines_list_their_variants(board):
    frames, _ = board
    table = frames["findings"]
    vectors = table[table["claim"].str.startswith("Inside MergeVLA's framework")]
    # mergevla_knots was run; mergevla at its defaults was not (no heads is another config)
    assert [e for e in vectors["entry"] if e] == ["mergevla_knots · oracle"]
    assert vectors.loc[vectors["entry"] != "", "rate"].iloc[0] == pytest.approx(0.75)
    baselines = table[table["claim"].str.startswith("Continual TA / TSV")]
    row = baselines[baselines["entry"] != ""].iloc[0]
    assert row["entry"].startswith("continual_ta ") and len(baselines[baselines["entry"] != ""]) == 1
    assert row["continual_curve"] == "100 → 50 → 33" and row["bwt"] == pytest.approx(-1.0)


def test_continual_curve_is_the_mean_over_seen_skills_after_each_admission(board):
    frames, _ = board
    table = frames["findings"]
    row = table[table["claim"] == "MergeVLA admitted continually collapses"].iloc[0]
    assert row["continual_curve"] == "100 → 88 → 67"
    assert row["bwt"] == pytest.approx(((0.5 - 1) + (0.75 - 1)) / 2)


def test_scale_sweep_marks_the_best_lambda_and_skips_other_configs(board):
    frames, out = board
    sweep = frames["scale_sweep"]
    assert sweep["lambda"].tolist() == [0.5, 1.0]
    assert sweep["best"].tolist() == [True, False]
    assert np.isclose(sweep["rate"], [0.5, 0.0]).all()
    text = (out / "findings.md").read_text()
    assert "Oracle upper bound" in text and "not on this board" in text
