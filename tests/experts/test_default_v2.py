"""The default expert set v2: its recipe keeps the papers' preconditions, suite-like skills evaluate task by
task, and the build runs every stage for real (tiny scale), measures acceptance and refuses a weak set."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from safetensors.torch import load_file

from vlamergebench.cli import main
from vlamergebench.eval.own_success import success_by_task
from vlamergebench.eval.run import DEFAULT_EXPERTS, task_units
from vlamergebench.experts import default_v2 as recipe
from vlamergebench.experts.acceptance import AcceptanceError
from vlamergebench.policies.checkpoint import LORA_FILE, VLM_FILE, ExpertSet
from vlamergebench.policies.lora import fold_factors
from vlamergebench.policies.registry import make_config


def test_the_recipe_keeps_the_preconditions_it_states():
    base_tasks = {(suite, task) for suite, tasks in recipe.BASE_TASKS for task in tasks}
    assert {suite for suite, _ in base_tasks} == {"libero_object", "libero_spatial", "libero_goal"}
    expert_tasks = [(skill.suite, task) for skill in recipe.SKILLS for task in skill.task_ids]
    assert not base_tasks & set(expert_tasks) and len(set(expert_tasks)) == len(expert_tasks)
    assert len(recipe.SKILLS) >= 4 and all(2 <= len(skill.task_ids) <= 5 for skill in recipe.SKILLS)
    suites = [skill.suite for skill in recipe.SKILLS]
    assert len(set(suites)) < len(suites)  # two experts share a scene, so routing is not trivial
    policy = make_config(recipe.PRESET)
    assert policy.llm.num_layers >= 8 and policy.lora.alpha == 2 * policy.lora.rank
    assert policy.lora.targets == "forward-linear"
    train = recipe.EXPERT_TRAIN
    assert (
        train["head_init"] == "base" and train["freeze_proprio_projector"] and train["norm_stats"] == "base"
    )
    # LoRA at upstream's rate; the pretrained head at a low rate: at most LoRA's, a fifth of pretraining's
    assert train["head_learning_rate"] <= train["learning_rate"] <= 3e-4
    assert train["head_learning_rate"] <= recipe.BASE_TRAIN["learning_rate"] / 5
    assert recipe.FIRST_DEMO_INIT_STATE >= 20 >= recipe.ACCEPTANCE_EPISODES  # evaluation stays held out


def test_experts_of_skills_the_recipe_dropped_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "set"
    for name, role in (("gone_01", "expert"), ("base", "base"), ("notes", None)):
        (out / name).mkdir(parents=True)
        (out / name / "config.json").write_text(json.dumps({"role": role}))
    (out / "gone_01.work").mkdir()
    (out / recipe.STATS_FILE).write_text("{}")
    (out / "user_file.txt").write_text("kept")
    lines = []
    recipe.drop_stale_experts(out, lines.append)
    assert not (out / "gone_01").exists() and not (out / "gone_01.work").exists()
    assert not (out / recipe.STATS_FILE).exists()  # statistics measured on a set with that expert
    assert (out / "base").is_dir() and (out / "notes").is_dir() and (out / "user_file.txt").is_file()
    assert lines == ["expert gone_01: not a skill of this revision of the recipe; removing it"]
    recipe.drop_stale_experts(tmp_path / "absent", lines.append)  # a fresh build has no folder yet


def test_an_expert_trained_on_other_demonstration_files_is_stale(tmp_path, monkeypatch):
    """Revision 4 added noise-injected demonstrations to one skill: its expert on the old files is rebuilt."""
    skill = recipe.SkillRecipe("pair", "libero_goal", (6, 9))
    monkeypatch.setattr(recipe, "SKILLS", (skill,))
    demos = tmp_path / "set" / "demos"
    expert = tmp_path / "set" / "pair"
    expert.mkdir(parents=True)

    def write_config(paths):
        provenance = {"train": recipe.expert_train_config(1), "demos": [{"path": str(p)} for p in paths]}
        (expert / "config.json").write_text(json.dumps({"role": "expert", "provenance": provenance}))

    write_config(recipe.skill_demo_paths(demos, skill))
    assert recipe.stale_fields(expert, 1) == {}
    assert [p.relative_to(demos).as_posix() for p in recipe.skill_demo_paths(demos, skill)] == [
        "libero_goal_task6.hdf5",
        "libero_goal_task9.hdf5",
    ]
    noisy = recipe.SkillRecipe("pair", "libero_goal", (6, 9), noisy_demos=0.1)
    monkeypatch.setattr(recipe, "SKILLS", (noisy,))
    wanted = [
        "libero_goal_task6.hdf5",
        "libero_goal_task9.hdf5",
        "noise_0.1/libero_goal_task6.hdf5",
        "noise_0.1/libero_goal_task9.hdf5",
    ]
    assert [p.relative_to(demos).as_posix() for p in recipe.skill_demo_paths(demos, noisy)] == wanted
    assert recipe.stale_fields(expert, 1) == {"demos": wanted}
    assert recipe.skill_demo_plan(noisy)[("libero_goal", 9, 0.1)] == recipe.EXPERT_DEMO_ATTEMPTS
    write_config(recipe.skill_demo_paths(demos, noisy))
    assert recipe.stale_fields(expert, 1) == {}


def test_the_shipped_default_is_the_recipes_and_passed_its_own_acceptance():
    """The embedded default is v2, built by this recipe, and ships the statistics that let it ship."""
    experts = ExpertSet.open(DEFAULT_EXPERTS)
    assert experts.name == recipe.SET_NAME
    assert [expert.config["skill"]["name"] for expert in experts.experts] == [s.name for s in recipe.SKILLS]
    assert experts.base.config["policy"]["name"] == recipe.PRESET
    assert experts.base.config["provenance"]["train"].items() >= recipe.BASE_TRAIN.items()
    for index, (expert, skill) in enumerate(zip(experts.experts, recipe.SKILLS, strict=True), start=1):
        assert expert.config["skill"]["task_ids"] == list(skill.task_ids)
        train = expert.config["provenance"]["train"]
        assert train.items() >= {**recipe.EXPERT_TRAIN, "seed": index, "lora_seed": index}.items()
        assert expert.base_id == experts.base.base_id
    stats = json.loads((DEFAULT_EXPERTS / recipe.STATS_FILE).read_text())
    assert stats["expert_set_id"] == experts.id
    own = stats["own_success"]
    assert len(own) == sum(len(skill.task_ids) for skill in recipe.SKILLS)
    assert min(own.values()) >= recipe.OWN_SUCCESS_BAR, own


def test_a_suite_like_skill_is_evaluated_task_by_task(tmp_path):
    class Expert:
        path = tmp_path
        config = {
            "skill": {
                "name": "goal_78",
                "suite": "libero_goal",
                "task": "turn on the stove",
                "task_id": 7,
                "task_ids": [7, 8],
                "tasks": ["turn on the stove", "put the bowl on the plate"],
                "env_id": "vlamergebench/LIBERO-Goal-v0",
            }
        }

    class Experts:
        experts = (Expert(),)

    units = task_units(Experts(), (), 84)
    assert [(u.skill, u.task, u.env_kwargs["task"]) for u in units] == [
        ("goal_78", "turn on the stove", 7),
        ("goal_78", "put the bowl on the plate", 8),
    ]
    Expert.config["skill"]["tasks"] = ["only one name"]
    with pytest.raises(ValueError, match=r"config.json: skill.tasks must list 2 distinct task names"):
        task_units(Experts(), (), 84)


def test_build_runs_every_stage_measures_acceptance_and_refuses_weak_experts(tmp_path, monkeypatch, capsys):
    """Real LIBERO demos, real training (2 steps), real rollouts: two-step experts must be refused."""
    pytest.importorskip("libero.libero")
    monkeypatch.setattr(recipe, "BASE_TASKS", (("libero_object", (5,)),))
    monkeypatch.setattr(
        recipe,
        "SKILLS",
        (
            recipe.SkillRecipe("pair", "libero_object", (0, 1)),
            recipe.SkillRecipe("one", "libero_object", (2,)),
        ),
    )
    monkeypatch.setattr(recipe, "BASE_DEMO_ATTEMPTS", 1)
    monkeypatch.setattr(recipe, "EXPERT_DEMO_ATTEMPTS", 1)
    monkeypatch.setattr(recipe, "PRESET", "tiny")
    small = {"steps": 2, "batch_size": 4, "checkpoint_every": 0}
    monkeypatch.setattr(recipe, "BASE_TRAIN", {**recipe.BASE_TRAIN, **small, "warmup_steps": 0})
    monkeypatch.setattr(recipe, "EXPERT_TRAIN", {**recipe.EXPERT_TRAIN, **small})
    measure = partial(
        success_by_task, out=tmp_path / "runs", episodes=1, workers=1, max_steps=8, progress=False
    )
    out, lines = tmp_path / "set", []
    with pytest.raises(AcceptanceError, match=r"experts below the own-success bar of 80% \(pair on '.*'"):
        recipe.build_default_experts_v2(
            out, threads=1, jobs=2, measure_success=measure, progress=False, log=lines.append
        )
    assert not (out / recipe.STATS_FILE).exists()
    stats = json.loads((out / "stats.rejected.json").read_text())
    assert set(stats["own_success"]) == {
        f"pair|{task}" for task in ExpertSet.open(out).experts[0].config["skill"]["tasks"]
    } | {f"one|{ExpertSet.open(out).experts[1].config['skill']['task']}"}
    assert set(stats["base_success"]) == set(stats["own_success"])

    # The statistics against an independent computation (peft-convention folding of the factors).
    experts = ExpertSet.open(out)
    base = load_file(experts.base.file(VLM_FILE))
    taus = []
    for expert in experts.experts:
        folded = fold_factors(base, load_file(expert.file(LORA_FILE)), expert.lora_scale)
        taus.append({name: folded[name] - base[name] for name in folded})
    llm = [name for name in taus[0] if name.startswith("llm.")]
    expected = sum(float(taus[0][n].pow(2).sum()) for n in llm) ** 0.5
    expected /= sum(float(base[n].pow(2).sum()) for n in llm) ** 0.5
    assert stats["ratio"]["pair"]["llm"] == pytest.approx(expected, rel=1e-4)
    a, b = (torch.cat([tau[n].flatten() for n in sorted(tau)]) for tau in taus)
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    assert stats["pairs"]["pair|one"]["cosine"] == pytest.approx(cosine, abs=1e-4)
    assert stats["ratio"]["pair"]["action_head"] > 0  # the head moved from the base's
    assert set(stats["head_block_distance"]) == {"0", "1", "2", "3"}

    logged = [json.loads(line)["stage"] for line in (out / "build_log.jsonl").read_text().splitlines()]
    assert {"base", "expert pair", "expert one"} <= set(logged)
    assert sum(stage.startswith("demos ") for stage in logged) == 4
    lines.clear()
    with pytest.raises(AcceptanceError):  # a rerun skips every finished stage and re-checks acceptance
        recipe.build_default_experts_v2(out, measure_success=measure, progress=False, log=lines.append)
    assert sum("done already" in line for line in lines) == 3

    # An expert another revision of the recipe built is rebuilt, not shipped; the rest stays.
    monkeypatch.setattr(recipe, "EXPERT_TRAIN", {**recipe.EXPERT_TRAIN, "steps": 3})
    kept_base = (out / "base" / VLM_FILE).stat().st_mtime_ns
    lines.clear()
    with pytest.raises(AcceptanceError):
        recipe.build_default_experts_v2(out, measure_success=measure, progress=False, log=lines.append)
    assert sum("built by another revision of the recipe (now {'steps': 3})" in line for line in lines) == 2
    assert all(e.config["provenance"]["steps"] == 3 for e in ExpertSet.open(out).experts)
    assert (out / "base" / VLM_FILE).stat().st_mtime_ns == kept_base

    # The CLI reports a refused set in one line (a measured result, not a traceback) and exits 1.
    monkeypatch.setattr(recipe, "ACCEPTANCE_EPISODES", 1)
    assert main(["build-default-experts", "--out", str(out), "--workers", "1", "--no-progress"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("vlamergebench build-default-experts: ") and "not accepted" in error
    assert "\n" not in error and "Traceback" not in error
