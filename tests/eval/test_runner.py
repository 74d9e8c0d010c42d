"""The runner on a real small Gymnasium env with real controllers: store, resume, faults, workers."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(
    0, str(Path(__file__).resolve().parent)
)  # spawned workers inherit sys.path and import evalworld

import evalworld

from vlamergebench.eval.policy import PolicyContractError
from vlamergebench.eval.rollout import rollout
from vlamergebench.eval.runner import plan, run_evaluations, run_phase
from vlamergebench.eval.store import ResultsStore, RunRecord, StoreError
from vlamergebench.eval.work import Contender, EpisodeJob, Evaluation, Phase, RunOptions, TaskUnit
from vlamergebench.eval.workers import WorkerError
from vlamergebench.provenance import episode_seed

SKILLS = ("left", "right")


def _run(routing_mode="oracle", router=None, seed=0):
    return RunRecord.create(
        method="controllers",
        method_config={"speed": evalworld.SPEED},
        expert_set_id="points",
        skills=SKILLS,
        protocol="one_shot",
        routing_mode=routing_mode,
        router=router,
        run_seed=seed,
    )


def _units(**env_kwargs):
    return tuple(
        TaskUnit(
            skill=s, suite="points", task=s, env_id=evalworld.ENV_ID, env_kwargs={"task": s, **env_kwargs}
        )
        for s in SKILLS
    )


def _contender(router=None, source=evalworld.Controllers):
    return Contender(functools.partial(source, SKILLS), router)


def _expected_success(skill, k):
    """An independent rollout of the same controller, outside the runner."""
    env = evalworld.PointEnv(task=skill)
    env = __import__("gymnasium").wrappers.TimeLimit(env, 40)
    out = rollout(
        env, evalworld.Controllers(SKILLS), None, skill=skill, seed=0, init_state_id=k, max_steps=40
    )
    return out.success, out.steps


def test_every_episode_stored_once_with_its_init_state_and_seed(tmp_path):
    phase = Phase(admission_step=1, units=_units(), episodes_per_task=6)
    with ResultsStore.open(tmp_path) as store:
        summary = run_phase(store, _run(), phase, _contender(), RunOptions(progress=False))
        rows = store.episodes_frame()
    assert (summary.episodes, summary.ran, summary.resumed) == (12, 12, 0)
    assert len(rows) == 12 and rows["error"].isna().all()
    assert (rows["init_state_id"] == rows["episode_index"]).all()
    assert [episode_seed(0, s, k) for s, k in zip(rows["skill"], rows["episode_index"], strict=True)] == list(
        rows["seed"]
    )
    assert (rows["routed_skill"] == rows["skill"]).all() and (
        rows["instruction"] == "go " + rows["task"]
    ).all()
    for row in rows.itertuples():
        assert (bool(row.success), row.steps) == _expected_success(row.skill, row.episode_index)
    assert 0 < rows["success"].sum() < 12  # the far init states fail: the rate is not trivially 0 or 1
    assert summary.successes == rows["success"].sum()

    with ResultsStore.open(tmp_path) as store:  # a rerun has nothing left to do
        again = run_phase(store, _run(), phase, _contender(), RunOptions(progress=False))
        assert (again.ran, again.resumed, again.successes) == (0, 12, summary.successes)
        bigger = Phase(admission_step=1, units=_units(), episodes_per_task=8)  # more episodes extend the run
        more = run_phase(store, _run(), bigger, _contender(), RunOptions(progress=False))
        assert (more.ran, more.resumed) == (4, 12)
        assert len(store.episodes_frame()) == 16


def test_a_simulator_fault_fails_one_episode_and_the_run_goes_on(tmp_path):
    phase = Phase(admission_step=1, units=_units(fault_init_states=[2]), episodes_per_task=5)
    with ResultsStore.open(tmp_path) as store:
        summary = run_phase(store, _run(), phase, _contender(), RunOptions(progress=False))
        rows = store.episodes_frame().set_index(["skill", "episode_index"])
    assert summary.errors == 2 and len(rows) == 10
    faulted = rows.xs(2, level="episode_index")
    assert (faulted["success"] == 0).all() and (faulted["steps"] == 2).all()
    assert faulted["error"].str.contains("RuntimeError: simulated instability at init state 2").all()
    for skill in SKILLS:  # episodes after the fault ran on a rebuilt simulator, as if nothing happened
        for k in (3, 4):
            assert (
                bool(rows.loc[(skill, k), "success"]),
                rows.loc[(skill, k), "steps"],
            ) == _expected_success(skill, k)


def test_routing_is_recorded_and_misrouting_costs_success(tmp_path):
    router = functools.partial(evalworld.KeywordRouter, {"right": "left"})
    phase = Phase(admission_step=1, units=_units(), episodes_per_task=4)
    with ResultsStore.open(tmp_path) as store:
        run_phase(store, _run("named", "keyword"), phase, _contender(router), RunOptions(progress=False))
        rows = store.episodes_frame()
    assert (rows["routed_skill"] == "left").all()
    assert rows.loc[rows["skill"] == "right", "success"].sum() == 0
    assert (rows["routing_s"] >= 0).all() and set(rows["router"]) == {"keyword"}


def test_contract_breaks_stop_the_run(tmp_path):
    phase = Phase(admission_step=1, units=_units(), episodes_per_task=2)
    with ResultsStore.open(tmp_path) as store:
        unknown_skill = functools.partial(evalworld.KeywordRouter, {"left": "sideways"})
        with pytest.raises(PolicyContractError, match="sideways"):
            run_phase(
                store, _run("named", "bad"), phase, _contender(unknown_skill), RunOptions(progress=False)
            )
        with pytest.raises(PolicyContractError, match=r"shape \(4, 3\), expected \(chunk >= 1, 2\)"):
            run_phase(
                store,
                _run(seed=1),
                phase,
                _contender(source=evalworld.BadShapePolicySource),
                RunOptions(progress=False),
            )
        assert store.episodes_frame().empty
        with pytest.raises(ValueError, match="skills"):
            bad = Phase(1, (TaskUnit("up", "points", "up", evalworld.ENV_ID, {"task": "up"}),), 1)
            run_phase(store, _run(), bad, _contender(), RunOptions(progress=False))


def test_plan_splits_tasks_across_workers_and_skips_finished():
    run = _run()
    evaluation = Evaluation(run, Phase(admission_step=1, units=_units(), episodes_per_task=5), _contender())
    job = EpisodeJob(run.run_id, 0, 1, None, {}, "rev")
    finished = {(run.run_id, 1, "left", evalworld.ENV_ID, "", "left", 0): (True, False)}
    items = plan(evaluation, job, finished, workers=4)
    assert [(i.unit.skill, i.episode_indices) for i in items] == [
        ("left", (1, 2)),
        ("left", (3, 4)),
        ("right", (0, 1, 2)),
        ("right", (3, 4)),
    ]
    assert [len(i.episode_indices) for i in plan(evaluation, job, {}, workers=1)] == [5, 5]


def test_one_simulator_serves_every_phase_of_its_task(tmp_path, monkeypatch):
    built = []
    original = TaskUnit.make_env
    monkeypatch.setattr(TaskUnit, "make_env", lambda unit: built.append(unit.task) or original(unit))
    run = RunRecord.create(method="controllers", method_config={}, expert_set_id="points", skills=SKILLS,
                           protocol="continual", routing_mode="oracle", router=None, run_seed=0)  # fmt: skip
    units = _units()
    evaluations = [
        Evaluation(run, Phase(1, units[:1], 3), _contender()),
        Evaluation(run, Phase(2, units, 3), _contender()),
    ]
    with ResultsStore.open(tmp_path) as store:
        summaries = run_evaluations(store, evaluations, RunOptions(progress=False))
        rows = store.episodes_frame()
    assert [(s.admission_step, s.episodes, s.ran) for s in summaries] == [(1, 3, 3), (2, 6, 6)]
    assert sorted(built) == ["left", "right"] and len(rows) == 9
    left = rows[rows["skill"] == "left"].set_index(["admission_step", "episode_index"])["steps"]
    assert left.loc[1].tolist() == left.loc[2].tolist()  # same init states, same seeds, same outcome


def test_worker_processes_match_in_process_and_survive_a_worker_crash(tmp_path):
    phase = Phase(admission_step=1, units=_units(crash_init_states=[1]), episodes_per_task=4)
    with ResultsStore.open(tmp_path / "workers") as store:
        summary = run_phase(store, _run(), phase, _contender(), RunOptions(workers=2, progress=False))
        rows = store.episodes_frame().set_index(["skill", "episode_index"]).sort_index()
    assert summary.ran == 8 and len(rows) == 8
    crashed = rows.xs(1, level="episode_index")
    assert crashed["error"].str.contains(r"died \(exit code -9\)").all() and (crashed["success"] == 0).all()
    assert rows["worker_pid"].nunique() >= 3  # two crashed workers were replaced
    healthy = rows.drop(index=1, level="episode_index")
    assert healthy["error"].isna().all()

    with ResultsStore.open(tmp_path / "inline") as store:
        run_phase(store, _run(), Phase(1, _units(), 4), _contender(), RunOptions(workers=1, progress=False))
        inline = store.episodes_frame().set_index(["skill", "episode_index"]).sort_index()
    columns = ["success", "steps", "seed", "init_state_id", "routed_skill"]
    assert healthy[columns].equals(inline.drop(index=1, level="episode_index")[columns])


def test_a_policy_error_in_a_worker_stops_the_run(tmp_path):
    phase = Phase(admission_step=1, units=_units(), episodes_per_task=2)
    with ResultsStore.open(tmp_path) as store, pytest.raises(WorkerError, match="shape"):
        run_phase(
            store,
            _run(),
            phase,
            _contender(source=evalworld.BadShapePolicySource),
            RunOptions(workers=2, progress=False),
        )


def test_rollout_caps_steps_and_reports_steps_taken():
    env = evalworld.PointEnv(task="left")
    out = rollout(
        env, evalworld.Controllers(SKILLS), None, skill="left", seed=3, init_state_id=12, max_steps=6
    )
    assert (out.success, out.steps, out.error) == (False, 6, None)
    assert np.isfinite(out.wall_s) and out.routed_skill == "left"


def test_a_dead_worker_is_an_infrastructure_error_kept_out_of_rates_and_rerun_on_resume(tmp_path):
    from vlamergebench.eval.results import load_results
    from vlamergebench.leaderboards.registry import build_leaderboards

    # admission step 2 = the run's final model, the one the success board ranks
    run, crashing = _run(), Phase(admission_step=2, units=_units(crash_init_states=[1]), episodes_per_task=3)
    with ResultsStore.open(tmp_path / "s") as store:
        first = run_phase(store, run, crashing, _contender(), RunOptions(workers=2, progress=False))
        pending = set(Evaluation(run, crashing, _contender()).episode_keys()) - set(
            store.finished_episodes(run.run_id)
        )
    assert first.ran == 6 and first.errors == 2
    assert sorted((key[2], key[-1]) for key in pending) == [("left", 1), ("right", 1)]
    results = load_results([tmp_path / "s"])
    assert len(results.episodes) == 4 and results.episodes["error"].isna().all()
    assert len(results.infrastructure_errors) == 2
    build_leaderboards([tmp_path / "s"], tmp_path / "board", ["success"])
    overall = (tmp_path / "board" / "success_overall.csv").read_text().splitlines()
    header, row = overall[0].split(","), overall[1].split(",")
    assert row[header.index("episodes")] == "4" and row[header.index("infrastructure_errors")] == "2"

    with ResultsStore.open(tmp_path / "s") as store:  # the rerun (healthy simulator) runs only those two
        again = run_phase(
            store, run, Phase(2, _units(), 3), _contender(), RunOptions(workers=1, progress=False)
        )
        rows = store.episodes_frame()
    assert (again.ran, again.resumed, again.episodes, again.errors) == (2, 4, 6, 0)
    assert len(rows) == 6 and rows["error"].isna().all()
    assert len(load_results([tmp_path / "s"]).infrastructure_errors) == 0


def test_retry_errors_reruns_episodes_that_ended_in_a_simulator_fault(tmp_path):
    run = _run()
    with ResultsStore.open(tmp_path / "s") as store:
        faulty = Phase(1, _units(fault_init_states=[0]), 2)
        run_phase(store, run, faulty, _contender(), RunOptions(progress=False))
        healthy = Phase(1, _units(), 2)
        plain = run_phase(store, run, healthy, _contender(), RunOptions(progress=False))
        assert (plain.ran, plain.errors) == (0, 2)  # a policy-side failure stands on a plain resume
        retried = run_phase(store, run, healthy, _contender(), RunOptions(progress=False, retry_errors=True))
        rows = store.episodes_frame()
    assert (retried.ran, retried.errors, retried.episodes) == (2, 0, 4)
    assert len(rows) == 4 and rows["error"].isna().all()


def test_episodes_of_two_method_code_versions_are_never_mixed_in_one_run(tmp_path):
    run, phase = _run(), Phase(1, _units(), 2)
    with ResultsStore.open(tmp_path / "s") as store:
        old = Evaluation(run, phase, _contender(), code_version="0ld0ld0ld0ld")
        run_evaluations(store, [old], RunOptions(progress=False))
        more = Evaluation(run, Phase(1, _units(), 3), _contender(), code_version="new0new0new0")
        with pytest.raises(StoreError, match="method code 0ld0ld0ld0ld; this is method code new0new0new0"):
            run_evaluations(store, [more], RunOptions(progress=False))
        rows = store.episodes_frame()
    assert len(rows) == 4 and rows["versions_json"].str.contains('"method_code":"0ld0ld0ld0ld"').all()
