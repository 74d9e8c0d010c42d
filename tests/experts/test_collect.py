"""Scripted collection over the real LIBERO simulator: success, replay, the HDF5 schema, resume, the CLI.

One scripted LIBERO-Object episode (alphabet soup, ~130 physics steps) is collected once for the module at
64 px; its images are rendered by replaying the recorded states.
"""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium as gym
import h5py
import numpy as np
import pytest

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.experts.collect import CollectConfig, collect_demos, run_expert_episode
from vlamergebench.policies.demos import DemoFile
from vlamergebench.policies.scripted.libero import LiberoScriptedExpert

SIZE = 64


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    config = CollectConfig(
        suite="libero_object", task=0, episodes=1, start_init_state=3, seed=5, image_size=SIZE, out=str(out)
    )
    return collect_demos(config, progress=False)


def test_scripted_episode_reaches_real_success(collected):
    (episode,) = collected.episodes
    assert episode.success and episode.init_state_id == 3 and episode.seed == 5
    assert 50 < episode.steps < 280  # inside LIBERO-Object's step limit


def test_file_reads_back_with_the_documented_schema(collected):
    with h5py.File(collected.path, "r") as handle:
        data = handle["data"]
        assert data.attrs["num_demos"] == 1 and data.attrs["macros_image_convention"] == "opencv"
        assert data.attrs["env_name"] == "libero_object/pick_up_the_alphabet_soup_and_place_it_in_the_basket"
        problem = json.loads(data.attrs["problem_info"])
        assert problem["language_instruction"] == "pick up the alphabet soup and place it in the basket"
        assert json.loads(data.attrs["env_args"])["env_id"] == "vlamergebench/LIBERO-Object-v0"
        demo = data["demo_0"]
        steps = int(demo.attrs["num_samples"])
        assert demo.attrs["init_state_id"] == 3 and steps == collected.episodes[0].steps
        shapes = {key: demo[key].shape for key in ("actions", "states", "rewards", "dones", "robot_states")}
        assert shapes["actions"] == (steps, 7) and shapes["robot_states"] == (steps, 9)
        assert shapes["states"][0] == steps and shapes["rewards"] == shapes["dones"] == (steps,)
        expected_obs = {"agentview_rgb": (steps, SIZE, SIZE, 3), "eye_in_hand_rgb": (steps, SIZE, SIZE, 3),
                        "ee_pos": (steps, 3), "ee_ori": (steps, 3), "ee_states": (steps, 6),
                        "gripper_states": (steps, 2), "joint_states": (steps, 7)}  # fmt: skip
        assert {key: demo["obs"][key].shape for key in demo["obs"]} == expected_obs
        assert demo["dones"][-1] == 1 and demo["dones"][:-1].sum() == 0
    with DemoFile(collected.path) as reader:
        loaded = reader.read("demo_0")
    assert loaded.proprio.shape == (steps, 8)
    first = next(loaded.steps())
    assert first["agentview_image"].dtype == np.uint8 and first["state"].dtype == np.float32


def test_recorded_demo_replays_to_the_same_final_state_and_images(collected):
    with DemoFile(collected.path) as reader:
        demo = reader.read("demo_0")
    env = gym.make("vlamergebench/LIBERO-Object-v0", task=0, image_size=SIZE)
    try:
        unwrapped = env.unwrapped
        obs, _ = env.reset(seed=5, options={"init_state_id": 3})
        np.testing.assert_array_equal(unwrapped.get_sim_state(), demo.states[0])
        np.testing.assert_array_equal(obs["agentview_image"], demo.images()["agentview_image"][0])
        np.testing.assert_allclose(obs["state"], demo.proprio[0], atol=1e-6)
        unwrapped.set_camera_rendering(False)
        for t, action in enumerate(demo.actions):
            if t > 0:  # the state before every action is the recorded one
                np.testing.assert_array_equal(unwrapped.get_sim_state(), demo.states[t], err_msg=f"step {t}")
            _, _, terminated, _, info = env.step(action)
        assert terminated and info["is_success"]
        assert unwrapped.sim_env.check_success()
    finally:
        env.close()


def test_failed_attempts_are_not_written_and_resume_skips_attempted(tmp_path):
    env = gym.make("vlamergebench/LIBERO-Object-v0", task=0, image_size=SIZE, max_episode_steps=20)
    try:
        expert = LiberoScriptedExpert(env.unwrapped.sim_env)
        short = run_expert_episode(env, expert, init_state_id=0, seed=0)
    finally:
        env.close()
    assert not short.success and short.steps == 20  # 20 steps cannot finish a pick and place
    assert short.states.shape[0] == short.actions.shape[0] == 20

    partial = tmp_path / "libero_object_task0.hdf5.partial"
    with h5py.File(partial, "w") as handle:
        data = handle.create_group("data")
        data.attrs["problem_info"] = json.dumps({"language_instruction": "x"})
        data.attrs["vlamergebench"] = json.dumps({"attempted_init_states": [0]})
    config = CollectConfig(suite="libero_object", task=0, episodes=1, out=str(tmp_path), resume=True)
    result = collect_demos(config, progress=False)
    assert result.episodes == [] and result.path.exists() and not partial.exists()
    with DemoFile(result.path) as reader:
        assert len(reader) == 0 and reader.provenance["attempted_init_states"] == [0]


def test_noise_injection_perturbs_the_executed_arm_command_and_records_the_experts(monkeypatch):
    """DART: the simulator runs expert + noise on the arm (never the gripper); the file keeps the expert's."""
    env = gym.make("vlamergebench/LIBERO-Object-v0", task=0, image_size=SIZE, max_episode_steps=12)
    executed = []
    step = env.step

    def spy(action):
        executed.append(np.array(action, dtype=float))
        return step(action)

    monkeypatch.setattr(env, "step", spy)
    try:
        expert = LiberoScriptedExpert(env.unwrapped.sim_env)
        clean = run_expert_episode(env, expert, init_state_id=0, seed=4)
        clean_executed, executed[:] = list(executed), []
        noisy = run_expert_episode(env, expert, init_state_id=0, seed=4, action_noise=0.2)
        noisy_executed, executed[:] = list(executed), []
        again = run_expert_episode(env, expert, init_state_id=0, seed=4, action_noise=0.2)
    finally:
        env.close()
    assert np.array_equal(np.stack(clean_executed), clean.actions)  # no noise: what ran is what is recorded
    difference = np.stack(noisy_executed) - noisy.actions
    assert np.abs(difference[:, :6]).max() > 0.05 and np.all(difference[:, 6] == 0)  # arm only
    assert np.all(np.abs(np.stack(noisy_executed)) <= 1.0)
    assert not np.array_equal(noisy.states, clean.states)  # the noise moved the robot
    assert np.array_equal(again.actions, noisy.actions)  # drawn from the episode's seed
    with pytest.raises(ValueError, match="action_noise must be a standard deviation in"):
        CollectConfig(suite="libero_object", task=0, episodes=1, action_noise=-0.1)


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="unknown suite 'libero_nope'"):
        CollectConfig(suite="libero_nope", task=0, episodes=1)
    with pytest.raises(ValueError, match="episodes must be >= 1"):
        CollectConfig(suite="libero_object", task=0, episodes=0)
    with pytest.raises(ValueError, match=r"CollectConfig: unknown field\(s\) \['episode'\]"):
        CollectConfig.from_dict({"suite": "libero_object", "task": 0, "episode": 1})
    with pytest.raises(ValueError, match="has 50 init states; episodes 49..50"):
        collect_demos(
            CollectConfig(suite="libero_object", task=0, episodes=2, start_init_state=49), progress=False
        )


def test_cli_lists_envs_and_tasks():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlamergebench.cli",
            "envs",
            "--family",
            "libero",
            "--tasks",
            "--id",
            "vlamergebench/LIBERO-Object-v0",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "vlamergebench/LIBERO-Object-v0" in out and "tasks=10" in out and "max_steps=280" in out
    assert "pick up the alphabet soup and place it in the basket" in out
