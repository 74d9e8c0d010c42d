"""The first default expert set (v1, in the repository; the package ships v2): made by the recipe
`vlamergebench build-default-experts --recipe v1` runs (vlamergebench/experts/default_v1.py)."""

from __future__ import annotations

import pytest

from vlamergebench.eval.run import DEFAULT_EXPERTS_V1, task_units
from vlamergebench.experts import default_v1 as recipe
from vlamergebench.policies.checkpoint import ExpertSet


def test_the_shipped_set_is_the_recipes():
    experts = ExpertSet.open(DEFAULT_EXPERTS_V1)
    skills = [expert.config["skill"] for expert in experts.experts]
    assert [skill["name"] for skill in skills] == [skill.name for skill in recipe.SKILLS]
    for shipped, planned in zip(skills, recipe.SKILLS, strict=True):
        assert (shipped["suite"], shipped["task_id"], shipped["env_id"]) == (
            planned.suite,
            planned.task_id,
            planned.env_id,
        )
    assert len({skill["suite"] for skill in skills}) >= 2 and len(skills) >= 4  # issue 4's minimum

    base = experts.base.config["provenance"]
    assert base["train"].items() >= {**recipe.BASE_TRAIN, "role": "base"}.items()
    assert [demo["demos"] for demo in base["demos"]] == list(recipe.BASE_DEMOS.values())  # Object: 100%
    assert experts.base.config["policy"]["name"] == "tiny"
    for expert in experts.experts:
        provenance = expert.config["provenance"]
        assert provenance["train"].items() >= {**recipe.EXPERT_TRAIN, "role": "expert"}.items()
        (demos,) = provenance["demos"]  # the successes among EXPERT_DEMOS scripted attempts
        assert 0.9 * recipe.EXPERT_DEMOS <= demos["demos"] <= recipe.EXPERT_DEMOS
        assert expert.base_id == experts.base.base_id


def test_run_evaluates_the_shipped_skills_on_their_own_envs():
    experts = ExpertSet.open(DEFAULT_EXPERTS_V1)
    units = task_units(experts, (), 84)
    assert [(unit.skill, unit.env_id, unit.env_kwargs["task"]) for unit in units] == [
        (skill.name, skill.env_id, skill.task_id) for skill in recipe.SKILLS
    ]


def test_the_plan_collects_each_task_once_with_enough_demos():
    plan = recipe.demo_plan()
    assert plan[("libero_object", 0)] == max(recipe.BASE_DEMOS[("libero_object", 0)], recipe.EXPERT_DEMOS)
    for skill in recipe.SKILLS:
        assert plan[(skill.suite, skill.task_id)] >= recipe.EXPERT_DEMOS
    # demos start after the evaluation's init states 0..9, so evaluation stays held out
    assert recipe.FIRST_INIT_STATE >= 10


def test_build_runs_every_stage_for_real_and_a_rerun_skips_them(tmp_path, monkeypatch):
    """The whole recipe on a one-skill, one-demo, two-step scale: real LIBERO, real training, real files."""
    pytest.importorskip("libero.libero")
    monkeypatch.setattr(recipe, "SKILLS", (recipe.SkillRecipe("object_0", "libero_object", 0),))
    monkeypatch.setattr(recipe, "BASE_DEMOS", {("libero_object", 0): 1})
    monkeypatch.setattr(recipe, "EXPERT_DEMOS", 1)
    small = {"steps": 2, "batch_size": 4, "checkpoint_every": 0}
    monkeypatch.setattr(recipe, "BASE_TRAIN", {**recipe.BASE_TRAIN, **small})
    monkeypatch.setattr(recipe, "EXPERT_TRAIN", {**recipe.EXPERT_TRAIN, **small})
    lines = []
    out = recipe.build_default_experts(tmp_path / "set", threads=1, progress=False, log=lines.append)

    experts = ExpertSet.open(out)
    assert [expert.config["skill"]["name"] for expert in experts.experts] == ["object_0"]
    assert experts.experts[0].config["provenance"]["steps"] == 2
    assert (out / "demos" / "libero_object_task0.hdf5").is_file()
    assert [line.split(":")[0] for line in lines[:3]] == [
        "demos libero_object task 0",
        "base",
        "expert object_0",
    ]

    lines.clear()
    recipe.build_default_experts(out, progress=False, log=lines.append)
    assert sum("done already" in line for line in lines) == 3
