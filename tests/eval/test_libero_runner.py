"""The runner on the real LIBERO simulator (LIBERO-Object task 0) with a real, trivial policy: episodes run in
chunks through ChunkedActions, start from LIBERO's fixed init states and land in the store."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from vlamergebench.eval.policy import SingleSkillSource
from vlamergebench.eval.runner import run_phase
from vlamergebench.eval.store import ResultsStore, RunRecord, is_infrastructure_error
from vlamergebench.eval.work import Contender, Phase, RunOptions, TaskUnit

ENV_ID = "vlamergebench/LIBERO-Object-v0"


class ReachDown:
    """Moves the gripper down, open, in chunks of 8 (never succeeds: success is not its point)."""

    def __init__(self):
        self.calls = 0

    def reset(self):
        pass

    def predict(self, observation):
        self.calls += 1
        assert observation["agentview_image"].shape == (64, 64, 3)  # every chunk sees a rendered frame
        chunk = np.zeros((8, 7), np.float32)  # (chunk, action_dim)
        chunk[:, 2], chunk[:, 6] = -0.5, -1.0
        return chunk


def test_libero_episodes_run_chunked_from_fixed_init_states(tmp_path):
    pytest.importorskip("libero.libero")
    run = RunRecord.create(method="reach_down", method_config={}, expert_set_id="none", skills=("object_0",),
                           protocol="one_shot", routing_mode="oracle", router=None, run_seed=0)  # fmt: skip
    unit = TaskUnit("object_0", "libero_object", "task_0", ENV_ID, {"task": 0, "image_size": 64})
    source = functools.partial(SingleSkillSource, ReachDown(), ["object_0"])
    with ResultsStore.open(tmp_path) as store:
        summary = run_phase(store, run, Phase(1, (unit,), 2), Contender(source),
                            RunOptions(max_steps=20, progress=False))  # fmt: skip
        rows = store.episodes_frame()
    assert (summary.ran, summary.errors, summary.successes) == (2, 0, 0)
    assert rows["steps"].tolist() == [20, 20]  # 8 + 8 + the cap's 4
    assert rows["init_state_id"].tolist() == [0, 1]
    assert set(rows["instruction"]) == {"pick up the alphabet soup and place it in the basket"}
    assert rows["versions_json"].str.contains('"mujoco":"3.17.0"').all()


# A test-only id: the real LIBERO env, remembered when built so that the scripted expert (which plans from
# the simulator's state, as in collect-demos) can stand behind the policy interface.
WATCHED_ID = "vlamergebench_test/LIBERO-Object-Watched-v0"
BUILT: list = []


def _watched_libero(**kwargs):
    import gymnasium as gym

    import vlamergebench.envs  # noqa: F401  (registers ENV_ID)

    env = gym.make(ENV_ID, **kwargs)
    BUILT.append(env.unwrapped)
    return env


class ScriptedPolicy:
    """LIBERO's scripted expert as a policy: one action per chunk, planned from the live simulator."""

    def reset(self):
        from vlamergebench.policies.scripted.libero import LiberoScriptedExpert

        self.expert = LiberoScriptedExpert(BUILT[-1].sim_env)
        self.expert.reset()

    def predict(self, observation):
        assert observation["agentview_image"].shape == (64, 64, 3)
        return self.expert.act()[None, :].astype(np.float32)


def test_a_successful_episode_goes_through_rollout_chunking_libero_and_the_store(tmp_path):
    pytest.importorskip("libero.libero")
    import gymnasium as gym

    if WATCHED_ID not in gym.registry:
        gym.register(WATCHED_ID, entry_point=_watched_libero)
    run = RunRecord.create(method="scripted", method_config={}, expert_set_id="none", skills=("object_0",),
                           protocol="one_shot", routing_mode="oracle", router=None, run_seed=0)  # fmt: skip
    unit = TaskUnit("object_0", "libero_object", "task_0", WATCHED_ID, {"task": 0, "image_size": 64})
    source = functools.partial(SingleSkillSource, ScriptedPolicy(), ["object_0"])
    with ResultsStore.open(tmp_path) as store:
        summary = run_phase(store, run, Phase(1, (unit,), 1), Contender(source),
                            RunOptions(max_steps=300, progress=False))  # fmt: skip
        rows = store.episodes_frame()
    assert (summary.ran, summary.errors, summary.successes) == (1, 0, 1)
    assert bool(rows["success"].iloc[0]) and rows["error"].isna().all()
    assert 50 < rows["steps"].iloc[0] < 300  # ended by LIBERO's own success check, well before the cap


# A test-only id: the real LIBERO env whose MuJoCo model one init state corrupts mid-episode.
FAULTY_ID = "vlamergebench_test/LIBERO-Object-Faulty-v0"
FAULT_INIT_STATE, FAULT_STEP = 1, 12  # inside the second chunk of 8


def _faulty_libero(**kwargs):
    import gymnasium as gym

    import vlamergebench.envs  # noqa: F401  (registers ENV_ID)

    class CorruptsMujoco(gym.Wrapper):
        """Before primitive step FAULT_STEP of init state FAULT_INIT_STATE, set the MuJoCo model's integrator
        to an id MuJoCo does not have, so MuJoCo's own ``mj_step`` raises ``mujoco.FatalError`` inside
        robosuite's step: a simulator fault of the real stack, not one raised by a stand-in."""

        def reset(self, *, seed=None, options=None):
            self.init_state_id, self.steps = options["init_state_id"], 0
            return self.env.reset(seed=seed, options=options)

        def step(self, action):
            self.steps += 1
            if (self.init_state_id, self.steps) == (FAULT_INIT_STATE, FAULT_STEP):
                self.env.unwrapped.sim_env.sim.model._model.opt.integrator = 99
            return self.env.step(action)

    return CorruptsMujoco(gym.make(ENV_ID, **kwargs))


def test_a_mujoco_fault_in_one_libero_episode_costs_that_episode_only(tmp_path):
    pytest.importorskip("libero.libero")
    import gymnasium as gym

    if FAULTY_ID not in gym.registry:
        gym.register(FAULTY_ID, entry_point=_faulty_libero)
    run = RunRecord.create(method="reach_down", method_config={}, expert_set_id="none", skills=("object_0",),
                           protocol="one_shot", routing_mode="oracle", router=None, run_seed=0)  # fmt: skip
    unit = TaskUnit("object_0", "libero_object", "task_0", FAULTY_ID, {"task": 0, "image_size": 64})
    source = functools.partial(SingleSkillSource, ReachDown(), ["object_0"])
    options = RunOptions(max_steps=20, progress=False)
    with ResultsStore.open(tmp_path) as store:
        summary = run_phase(store, run, Phase(1, (unit,), 3), Contender(source), options)
        rows = store.episodes_frame().set_index("episode_index")
        again = run_phase(store, run, Phase(1, (unit,), 3), Contender(source), options)
        finished = store.finished_episodes(run.run_id)
        retried = store.finished_episodes(run.run_id, retry_errors=True)
    assert (summary.ran, summary.errors, summary.successes) == (3, 1, 0)
    assert rows["init_state_id"].tolist() == [0, 1, 2]
    # The other episodes, before and after the fault (the latter on a rebuilt simulator), ran in full.
    assert rows.loc[[0, 2], "error"].isna().all() and rows.loc[[0, 2], "steps"].tolist() == [20, 20]
    faulted = rows.loc[1]
    assert faulted["error"].startswith("FatalError: mj_step: invalid integrator")
    assert faulted["steps"] == 8 and not faulted["success"]  # the first chunk ran; the second one faulted
    # The store's rule for a simulator fault: the policy's failed episode, not an infrastructure error: it
    # counts in the success rate and a resume keeps it (only --retry-errors reruns it).
    assert not is_infrastructure_error(faulted["error"])
    assert (again.ran, again.resumed) == (0, 3)
    assert [key[-1] for key, (_, error) in finished.items() if error] == [1]
    assert sorted(key[-1] for key in retried) == [0, 2]
