"""ALOHA suites on gym-aloha's real dm_control/MuJoCo physics: contract, scripted success, rendering."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest

import vlamergebench.envs  # noqa: F401  (registers the ids, picks the GL backend)

if importlib.util.find_spec("gym_aloha") is None or importlib.util.find_spec("dm_control") is None:
    pytest.skip(
        "gym-aloha is missing: pip install 'vlamergebench[aloha]' && pip install --no-deps gym-aloha==0.1.5",
        allow_module_level=True,
    )

from gymnasium.utils.env_checker import check_env

from vlamergebench.envs.aloha import ACTION_DIM, NUM_INIT_STATES, AlohaEnv
from vlamergebench.envs.chunking import ChunkedActions
from vlamergebench.policies.demos import DemoFile, DemoWriter
from vlamergebench.policies.scripted.aloha import (
    ALOHA_LAYOUT,
    AlohaScriptedExpert,
    collect_episode,
    demo_layout,
    record_demos,
    render_states,
)

IDS = {"transfer_cube": "vlamergebench/AlohaTransferCube-v0", "insertion": "vlamergebench/AlohaInsertion-v0"}
IMAGE_SIZE = 64  # rendering cost barely depends on size; small keeps the arrays light


@pytest.fixture(scope="module", params=sorted(IDS))
def task_env(request):
    env = gym.make(IDS[request.param], image_size=IMAGE_SIZE)
    yield request.param, env
    env.close()


@pytest.fixture(scope="module")
def episodes(task_env):
    """One scripted episode per task on evaluation layout 7, physics only (shared by several tests)."""
    task, env = task_env
    return collect_episode(env, AlohaScriptedExpert(task), seed=0, init_state_id=7, render=False)


def _count_renders(env, monkeypatch) -> list:
    physics = env.unwrapped.physics
    calls, original = [], physics.render

    def counting(*args, **kwargs):
        calls.append(kwargs.get("camera_id"))
        return original(*args, **kwargs)

    monkeypatch.setattr(physics, "render", counting)
    return calls


def test_ids_are_registered_and_listed():
    for task, env_id in IDS.items():
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == 400
        (listed,) = AlohaEnv.list_tasks(**spec.kwargs)
        assert listed["name"] == task and listed["instruction"]
    assert [t["name"] for t in AlohaEnv.list_tasks()] == ["transfer_cube", "insertion"]


def test_check_env_and_spaces(task_env):
    task, env = task_env
    check_env(env.unwrapped, skip_render_check=True)
    assert env.action_space.shape == (ACTION_DIM,)
    assert env.action_space.low[6] == 0.0 and env.action_space.high[13] == 1.0  # normalised grippers
    assert set(env.observation_space.spaces) == {"top_image", "angle_image", "state", "instruction"}


def test_same_seed_and_layout_give_identical_rollouts(task_env):
    task, env = task_env
    other = gym.make(IDS[task], image_size=IMAGE_SIZE)
    try:
        actions = np.random.default_rng(1).uniform(
            env.action_space.low, env.action_space.high, (5, ACTION_DIM)
        )
        runs = []
        for made in (env, other):
            observations = [made.reset(seed=3, options={"init_state_id": 11})[0]]
            observations += [made.step(action)[0] for action in actions]
            runs.append(observations)
        for first, second in zip(*runs, strict=True):
            for key in first:
                assert np.array_equal(first[key], second[key]), key
        third = other.reset(seed=3, options={"init_state_id": 12})[0]
        assert not np.array_equal(
            third["top_image"], runs[0][0]["top_image"]
        )  # another layout is another scene
    finally:
        other.close()


def test_layouts_evaluation_ids_and_training_seeds(task_env):
    _, env = task_env
    _, info = env.reset(seed=5, options={"init_state_id": NUM_INIT_STATES - 1})
    assert info["layout_seed"] == NUM_INIT_STATES - 1
    seeds = {env.reset(seed=s)[1]["layout_seed"] for s in range(20)}
    assert len(seeds) == 20 and min(seeds) >= NUM_INIT_STATES  # training layouts never repeat evaluation ones
    assert env.reset(seed=4)[1]["layout_seed"] == env.reset(seed=4)[1]["layout_seed"]


def test_scripted_episode_reaches_success(task_env, episodes):
    task, env = task_env
    assert episodes["success"], f"scripted {task} failed on layout 7"
    steps = len(episodes["actions"])
    assert steps < gym.spec(IDS[task]).max_episode_steps
    assert episodes["rewards"][-1] == 1 and episodes["rewards"][:-1].sum() == 0
    assert episodes["actions"].shape == (steps, ACTION_DIM) and episodes["obs"]["qpos"].shape == (steps, 14)
    # Replaying a recorded state reproduces the observation recorded for it.
    for t in (0, steps // 2, steps - 1):
        replayed = env.unwrapped.observe_state(episodes["states"][t])
        np.testing.assert_allclose(replayed["state"], episodes["obs"]["qpos"][t], atol=1e-6)


def test_demo_round_trips_through_the_libero_layout(task_env, episodes, tmp_path):
    task, env = task_env
    obs = {"qpos": episodes["obs"]["qpos"][:3], **render_states(env, episodes["states"][:3])}  # (3 steps)
    path = tmp_path / f"{task}.hdf5"
    problem = {"language_instruction": episodes["instruction"]}
    with DemoWriter(path, env_name=f"aloha/{task}", problem_info=problem, layout=ALOHA_LAYOUT) as writer:
        writer.add_demo(episodes["actions"][:3], episodes["states"][:3], obs)
    with DemoFile(path) as demos:
        (demo,) = list(demos)
        steps = list(demo.steps())
    assert demos.instruction == episodes["instruction"]
    assert steps[1]["top_image"].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and steps[1]["state"].shape == (14,)
    np.testing.assert_array_equal(steps[2]["angle_image"], obs["angle_rgb"][2])
    np.testing.assert_allclose(steps[2]["action"], episodes["actions"][2])


def test_record_demos_writes_successful_training_layouts(tmp_path):
    env = gym.make(IDS["transfer_cube"], image_size=32, cameras=("top",))
    try:
        path = record_demos(env, tmp_path / "transfer.hdf5", num_demos=1, first_seed=3)
    finally:
        env.close()
    with DemoFile(path) as demos:
        demo = demos.read("demo_0")
    assert demos.layout == demo_layout(("top",)) and demos.env_args["cameras"] == ["top"]
    assert demo.attrs["seed"] == 3 and demo.attrs["layout_seed"] >= NUM_INIT_STATES
    assert demo.images()["top_image"].shape == (len(demo), 32, 32, 3) and demo.proprio.shape == (
        len(demo),
        14,
    )
    assert demo.actions.shape == (len(demo), ACTION_DIM)


def test_only_the_read_cameras_render(task_env, monkeypatch):
    _, env = task_env
    hold = env.reset(seed=0, options={"init_state_id": 0})[0]["state"].astype(np.float64)
    calls = _count_renders(env, monkeypatch)
    first = env.step(hold)[0]
    assert sorted(calls) == ["angle", "top"]  # gym-aloha would render three 480x640 cameras here
    env.unwrapped.set_camera_rendering(False)
    try:
        second = env.step(hold)[0]
    finally:
        env.unwrapped.set_camera_rendering(True)
    assert len(calls) == 2 and np.array_equal(second["top_image"], first["top_image"])  # repeats last frame


def test_chunked_execution_renders_once_per_chunk(task_env, monkeypatch):
    task, env = task_env
    chunked = ChunkedActions(env, chunk_size=8)
    chunked.reset(seed=0, options={"init_state_id": 2})
    expert = AlohaScriptedExpert(task)
    calls = _count_renders(env, monkeypatch)
    # The expert's plan is indexed by time, so 8 calls give its targets for the next 8 steps: one chunk.
    chunk = [expert.act(*env.unwrapped.sim) for _ in range(8)]  # (chunk, action_dim)
    observation, _, _, _, info = chunked.step(np.asarray(chunk, dtype=np.float32))
    assert info["executed_steps"] == 8 and len(calls) == 2
    fresh = env.unwrapped.render_cameras()
    assert np.array_equal(observation["top_image"], fresh["top_image"])  # the frame is the final state's


def test_bad_input_raises_naming_the_problem(task_env):
    task, env = task_env
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"expected \(14,\)"):
        env.step(np.zeros(7))
    with pytest.raises(ValueError, match="non-finite entries at indices \\[3\\]"):
        env.step(np.array([0, 0, 0, np.nan] + [0] * 10, dtype=np.float64))
    with pytest.raises(ValueError, match="valid ids are 0..49"):
        env.reset(options={"init_state_id": NUM_INIT_STATES})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"init_state": 1})
    with pytest.raises(ValueError, match="unknown ALOHA task"):
        AlohaEnv(task="fold_towel")
    with pytest.raises(ValueError, match="cameras must be distinct names"):
        AlohaEnv(task=task, cameras=("top", "ceiling"))
    with pytest.raises(ValueError, match="no scripted ALOHA expert"):
        AlohaScriptedExpert("fold_towel")
