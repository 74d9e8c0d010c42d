"""Perturbation axes on the real LIBERO simulator (LIBERO-Object task 0, 64 px frames).

Each axis changes what it should and nothing else, level 0 is the identity, the same (seed, level) gives the
same pixels, and the privileged scripted expert still succeeds under mild levels of the pixel and text axes.
One simulator per axis (5-15 s each to build on this shared 2-core box).
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.envs.chunking import ChunkedActions
from vlamergebench.envs.perturb import background, camera, layout, light, robot_init
from vlamergebench.envs.perturb.config import PerturbationConfig
from vlamergebench.envs.perturb.language import InstructionRewrite
from vlamergebench.envs.perturb.noise import SensorNoise
from vlamergebench.policies.scripted.libero import LiberoScriptedExpert

SIZE = 64
BASE_ID = "vlamergebench/LIBERO-Object-v0"
PERTURBED_ID = "vlamergebench/LIBERO-Perturbed-Object-v0"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("perturb_cache"))


@pytest.fixture(scope="module")
def base():
    """The unperturbed env after reset to init state 0: (env, observation, flattened sim state)."""
    env = gym.make(BASE_ID, task=0, image_size=SIZE)
    observation, _ = env.reset(seed=0, options={"init_state_id": 0})
    yield env, observation, env.unwrapped.get_sim_state()
    env.close()


def _make(cache_dir: str, **perturbation) -> gym.Env:
    return gym.make(PERTURBED_ID, task=0, image_size=SIZE, perturbation=perturbation, cache_dir=cache_dir)


def _reset(env: gym.Env, seed: int = 0, init_state_id: int = 0):
    return env.reset(seed=seed, options={"init_state_id": init_state_id})


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(int) - b.astype(int)).mean())


def _object_qpos(env: gym.Env) -> np.ndarray:
    """qpos of every free-joint object (the arm and gripper excluded)."""
    sim_env = env.unwrapped.sim_env
    return np.concatenate(
        [sim_env.sim.data.get_joint_qpos(o.joints[-1]) for o in sim_env.env.objects_dict.values()]
    )


def test_noise_variant_changes_only_the_third_person_frame(base, cache_dir):
    _, base_obs, base_state = base
    env = gym.make(PERTURBED_ID, task=0, image_size=SIZE, variant="noise-L3-s0", cache_dir=cache_dir)
    observation, info = _reset(env)
    # The scene env under the wrapper is the identity at level 0: its own render equals the plain env's.
    np.testing.assert_array_equal(
        env.unwrapped.render_cameras()["agentview_image"], base_obs["agentview_image"]
    )
    np.testing.assert_array_equal(env.unwrapped.get_sim_state(), base_state)
    assert _change(observation["agentview_image"], base_obs["agentview_image"]) > 2
    for key in ("wrist_image", "state", "instruction"):
        np.testing.assert_array_equal(observation[key], base_obs[key])
    kind = info["perturbation"]["params"]["noise"]["kind"]
    assert info["perturbation"]["variant"] == "noise-L3-s0" and info["perturbation"]["axes"] == {"noise": 3}
    np.testing.assert_array_equal(_reset(env)[0]["agentview_image"], observation["agentview_image"])
    check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)
    # Chunked execution renders only the last frame; the noise at that frame is the same as step by step.
    chunk = np.tile(np.array([0.3, 0, 0, 0, 0, 0, -1], np.float32), (4, 1))  # (chunk, action_dim)
    _reset(env, seed=5)
    stepped = [env.step(action)[0]["agentview_image"] for action in chunk][-1]
    _reset(env, seed=5)
    chunked = ChunkedActions(env, 4).step(chunk)[0]["agentview_image"]
    np.testing.assert_array_equal(chunked, stepped)
    assert kind in ("motion_blur", "gaussian_blur", "zoom_blur", "fog", "glass_blur")
    env.close()


def test_noise_wrapper_is_seeded_per_episode_and_frame(base):
    env, base_obs, base_state = base
    noisy = SensorNoise(env, level=2, seed=0, kind="glass_blur")
    first = _reset(noisy, seed=0)[0]["agentview_image"]
    np.testing.assert_array_equal(first, _reset(noisy, seed=0)[0]["agentview_image"])
    assert not np.array_equal(first, _reset(noisy, seed=1)[0]["agentview_image"])
    other_seed = SensorNoise(env, level=2, seed=1, kind="glass_blur")
    assert not np.array_equal(first, _reset(other_seed, seed=0)[0]["agentview_image"])
    np.testing.assert_array_equal(_reset(noisy, seed=0)[0]["wrist_image"], base_obs["wrist_image"])
    np.testing.assert_array_equal(env.unwrapped.get_sim_state(), base_state)
    identity = SensorNoise(env, level=0, seed=0)
    np.testing.assert_array_equal(_reset(identity)[0]["agentview_image"], base_obs["agentview_image"])
    with pytest.raises(ValueError, match="observation entry 'front'"):
        SensorNoise(env, level=1, image_key="front")


def test_language_wrapper_changes_only_the_instruction(base):
    env, base_obs, base_state = base
    rewritten = InstructionRewrite(env, level=3, seed=0)
    observation, info = _reset(rewritten)
    assert (
        observation["instruction"] == info["instruction"] == rewritten.instruction != base_obs["instruction"]
    )
    assert info["perturbation"]["params"]["language"]["original"] == base_obs["instruction"]
    for key in ("agentview_image", "wrist_image", "state"):
        np.testing.assert_array_equal(observation[key], base_obs[key])
    np.testing.assert_array_equal(env.unwrapped.get_sim_state(), base_state)
    assert _reset(InstructionRewrite(env, level=0))[0]["instruction"] == base_obs["instruction"]
    assert InstructionRewrite(env, level=3, seed=0).instruction == rewritten.instruction
    assert InstructionRewrite(env, level=3, seed=1).instruction != rewritten.instruction


def test_camera_moves_the_third_person_view_only(base, cache_dir):
    base_env, base_obs, base_state = base
    env = _make(cache_dir, camera=3)
    observation, info = _reset(env)
    assert _change(observation["agentview_image"], base_obs["agentview_image"]) > 10
    np.testing.assert_array_equal(observation["wrist_image"], base_obs["wrist_image"])
    np.testing.assert_array_equal(env.unwrapped.get_sim_state(), base_state)
    view = tuple(info["perturbation"]["params"]["camera"]["liberoplus_view"])
    assert view == camera.sample_camera_view(3, PerturbationConfig(camera=3).axis_rng("camera"))
    default = camera.read_camera_pose(base_env.unwrapped.sim_env.sim.model._model)
    position, quat = camera.liberoplus_camera_pose(*default, view)
    pose = camera.read_camera_pose(env.unwrapped.sim_env.sim.model._model)
    np.testing.assert_allclose(pose[0], position, atol=1e-12)
    np.testing.assert_allclose(pose[1], quat / np.linalg.norm(quat), atol=1e-12)
    np.testing.assert_array_equal(_reset(env)[0]["agentview_image"], observation["agentview_image"])
    env.close()


def test_light_changes_pixels_not_the_state(base, cache_dir):
    base_env, base_obs, base_state = base
    env = _make(cache_dir, light=3, seed=2)
    observation, _ = _reset(env)
    assert _change(observation["agentview_image"], base_obs["agentview_image"]) > 2
    np.testing.assert_array_equal(env.unwrapped.get_sim_state(), base_state)
    default = light.read_lights(base_env.unwrapped.sim_env.sim.model._model)
    expected = light.sample_lights(default, 3, PerturbationConfig(light=3, seed=2).axis_rng("light"))
    actual = light.read_lights(env.unwrapped.sim_env.sim.model._model)
    for name in light.PARAMETERS:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6)
    env.close()


def test_background_retextures_surfaces_reproducibly(base, cache_dir):
    base_env, base_obs, base_state = base
    env = _make(cache_dir, background=4, seed=1)
    observation, info = _reset(env)
    assert _change(observation["agentview_image"], base_obs["agentview_image"]) > 5
    np.testing.assert_array_equal(env.unwrapped.get_sim_state(), base_state)
    assert set(info["perturbation"]["params"]["background"]) == {"support", "walls", "floor"}
    # The same (seed, level) writes the same texels into a fresh copy of the unperturbed model.
    fresh = copy.deepcopy(base_env.unwrapped.sim_env.sim.model._model)
    background.apply_background(fresh, 4, PerturbationConfig(background=4, seed=1).axis_rng("background"))
    np.testing.assert_array_equal(fresh.tex_data, env.unwrapped.sim_env.sim.model._model.tex_data)
    env.close()


def test_liberoplus_robot_init_reproduces_its_controller_drift(base, cache_dir):
    base_env, _, _ = base
    env = _make(cache_dir, robot_init_variant=401)  # 0.5 rad offset; LIBERO-Plus drifts ~16 cm here
    _reset(env)
    drift = np.linalg.norm(env.unwrapped.robot_state()["ee_pos"] - base_env.unwrapped.robot_state()["ee_pos"])
    assert 0.10 < drift < 0.20, drift
    np.testing.assert_allclose(_object_qpos(env), _object_qpos(base_env), atol=1e-3)
    state = env.unwrapped.get_sim_state()
    _reset(env, init_state_id=3)
    _reset(env)  # an episode does not depend on the one before it
    np.testing.assert_array_equal(env.unwrapped.get_sim_state(), state)
    env.close()


def test_clean_robot_init_starts_at_the_offset_pose(base, cache_dir):
    base_env, _, _ = base
    env = _make(cache_dir, robot_init_variant=401, robot_init_variant_mode="robot_init_clean")
    _, info = _reset(env)
    joints = env.unwrapped.robot_state()["joint_states"]
    np.testing.assert_allclose(joints, robot_init.offset_qpos(401), atol=0.03)
    np.testing.assert_allclose(_object_qpos(env), _object_qpos(base_env), atol=1e-3)
    assert info["perturbation"]["params"]["robot_init_clean"]["liberoplus_variant"] == 401
    env.close()


def test_layout_moves_objects_adds_distractors_and_caches_init_states(base, cache_dir):
    _, _, base_state = base
    env = gym.make(
        PERTURBED_ID,
        task=0,
        image_size=SIZE,
        perturbation={"layout": 3},
        cache_dir=cache_dir,
        layout_init_states=2,
    )
    _, info = _reset(env)
    change = info["perturbation"]["params"]["layout"]
    assert len(change["distractors"]) == 1 and len(change["moved"]) == 7
    assert env.unwrapped.get_sim_state().shape[0] == base_state.shape[0] + 13  # one more free body (7 + 6)
    unwrapped = env.unwrapped
    cached = layout.load_or_sample_init_states(
        unwrapped.sim_env, unwrapped._layout_text, 0, 3, unwrapped.fixture_seed, cache_dir, 2
    )
    resampled = layout.sample_init_states(unwrapped.sim_env, 0, 3, 2)
    np.testing.assert_array_equal(cached["states"], resampled["states"])
    assert not np.allclose(cached["states"][0], cached["states"][1])
    with pytest.raises(ValueError, match="valid ids are 0..1"):
        _reset(env, init_state_id=2)
    env.close()


def test_scripted_expert_succeeds_under_mild_pixel_and_text_axes(base, cache_dir):
    _, base_obs, _ = base
    env = _make(cache_dir, camera=2, light=2, background=2, noise=2, language=2)
    observation, info = _reset(env)
    assert set(info["perturbation"]["axes"]) == {"camera", "light", "background", "noise", "language"}
    assert observation["instruction"] != base_obs["instruction"]
    assert _change(observation["agentview_image"], base_obs["agentview_image"]) > 10
    env.unwrapped.set_camera_rendering(False)  # the expert reads the simulator, not the frames
    expert = LiberoScriptedExpert(env.unwrapped.sim_env)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, info = env.step(expert.act())
    assert info["is_success"] and terminated
    env.close()
