"""LIBERO envs over the real simulator: contract, determinism, LIBERO parity, bad input, vector envs.

One simulator per module (creation ~4 s, first reset ~2 s on this box); images at 128 px.
"""

from __future__ import annotations

import contextlib
import io
import string

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.utils.passive_env_checker import env_render_passive_checker

import vlamergebench.envs
from vlamergebench.envs.libero import LiberoEnv

ENV_ID = "vlamergebench/LIBERO-Object-v0"
SIZE = 128
STANDARD_LIMITS = {
    "LIBERO-Spatial": 220,
    "LIBERO-Object": 280,
    "LIBERO-Goal": 300,
    "LIBERO-10": 520,
    "LIBERO-90": 400,
}


@pytest.fixture(scope="module")
def env():
    made = gym.make(ENV_ID, task=0, image_size=SIZE, render_mode="rgb_array")
    yield made
    made.close()
    made.close()  # a second close does nothing
    assert made.unwrapped._sim_env is None


def _libero_ids() -> list[str]:
    return [
        k for k, spec in gym.registry.items() if spec.entry_point == "vlamergebench.envs.libero:LiberoEnv"
    ]


def test_catalogue_registers_every_suite_with_its_step_limit():
    ids = _libero_ids()
    assert len(ids) == 5 + 16, ids
    for name, limit in STANDARD_LIMITS.items():
        assert gym.spec(f"vlamergebench/{name}-v0").max_episode_steps == limit
        for kind in ("Lan", "Object", "Swap", "Task"):
            pro = name.replace("LIBERO-", "LIBERO-PRO-") + f"-{kind}"
            if name != "LIBERO-90":
                assert gym.spec(f"vlamergebench/{pro}-v0").max_episode_steps == limit
    assert set(vlamergebench.envs.LIBERO_SUITES) == {gym.spec(i).kwargs["suite"] for i in ids}


@pytest.mark.parametrize("env_id", _libero_ids())
def test_every_registered_suite_lists_tasks_that_fit_the_text_space(env_id):
    tasks = LiberoEnv.list_tasks(**gym.spec(env_id).kwargs)
    expected = 90 if "90" in env_id else 10
    assert [t["task_id"] for t in tasks] == list(range(expected))
    text = gym.spaces.Text(256, min_length=1, charset=vlamergebench.envs.contract.INSTRUCTION_CHARSET)
    for task in tasks:
        assert task["instruction"] in text, task


def test_language_perturbation_suites_take_the_instruction_from_the_bddl():
    standard = LiberoEnv.list_tasks("libero_object")[0]
    perturbed = LiberoEnv.list_tasks("libero_object_lan")[0]
    assert standard["name"] == perturbed["name"]
    assert standard["instruction"] == "pick up the alphabet soup and place it in the basket"
    assert perturbed["instruction"] != standard["instruction"]


def test_check_env_passes(env):
    # The render and close checks build two more simulators (~10 s); the same checks run on this env instead.
    check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)
    env_render_passive_checker(env.unwrapped)
    frame = env.unwrapped.render()
    assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8


def test_observation_contract(env):
    obs, info = env.reset(seed=0, options={"init_state_id": 1})
    assert obs["agentview_image"].shape == obs["wrist_image"].shape == (SIZE, SIZE, 3)
    assert obs["agentview_image"].dtype == np.uint8 and obs["state"].dtype == np.float32
    assert obs["state"].shape == (8,)
    assert obs["instruction"] == info["instruction"] == "pick up the alphabet soup and place it in the basket"
    assert info == {
        "is_success": False,
        "task": "pick_up_the_alphabet_soup_and_place_it_in_the_basket",
        "task_id": 0,
        "suite": "libero_object",
        "instruction": obs["instruction"],
        "init_state_id": 1,
    }
    assert obs in env.observation_space
    # The gripper is open after the settle steps, fingers symmetric (LIBERO's 2 finger joints).
    assert obs["state"][6] > 0.03 and obs["state"][7] < -0.03


def test_same_seed_and_init_state_give_identical_observations(env):
    first, _ = env.reset(seed=3, options={"init_state_id": 2})
    rng = np.random.default_rng(0)
    for _ in range(5):
        env.step(rng.uniform(-1, 1, 7).astype(np.float32))
    second, _ = env.reset(seed=3, options={"init_state_id": 2})
    for key in ("agentview_image", "wrist_image", "state"):
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    other, _ = env.reset(seed=3, options={"init_state_id": 3})
    assert not np.array_equal(first["state"], other["state"])


def test_step_observation_equals_replayed_state(env):
    env.reset(seed=0, options={"init_state_id": 0})
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0, -0.5, 0, 0, 0, 1], np.float32))
    assert (reward, terminated, truncated) == (0.0, False, False)
    replayed = env.unwrapped.observe_state(env.unwrapped.get_sim_state())
    for key in ("agentview_image", "wrist_image", "state"):
        np.testing.assert_array_equal(obs[key], replayed[key], err_msg=key)


def test_images_are_libero_frames_flipped_upright(env):
    """Our cameras equal real LIBERO's OffScreenRenderEnv observation of the same state, rows reversed."""
    from libero.libero.envs import OffScreenRenderEnv

    unwrapped = env.unwrapped
    state = unwrapped.init_states[4]
    ours = unwrapped.observe_state(state)
    kwargs = unwrapped._simulator_kwargs()
    kwargs.update(use_camera_obs=True, camera_heights=SIZE, camera_widths=SIZE)
    raw = OffScreenRenderEnv(**{k: v for k, v in kwargs.items() if k != "has_offscreen_renderer"})
    try:
        raw.reset()
        raw_obs = raw.set_init_state(state)
        np.testing.assert_array_equal(ours["agentview_image"], raw_obs["agentview_image"][::-1])
        np.testing.assert_array_equal(ours["wrist_image"], raw_obs["robot0_eye_in_hand_image"][::-1])
        np.testing.assert_allclose(ours["state"][:3], raw_obs["robot0_eef_pos"], atol=1e-6)
        np.testing.assert_allclose(ours["state"][6:], raw_obs["robot0_gripper_qpos"], atol=1e-6)
    finally:
        raw.sim._render_context_offscreen.gl_ctx.make_current()
        raw.close()


def test_bad_input_raises_naming_what_is_valid(env):
    with pytest.raises(ValueError, match="unknown LIBERO suite 'libero_nope'.*libero_object"):
        gym.make(ENV_ID, suite="libero_nope", task=0)
    with pytest.raises(ValueError, match="(?s)unknown task 'fly_away'.*pick_up_the_alphabet_soup"):
        gym.make(ENV_ID, task="fly_away")
    with pytest.raises(ValueError, match="task id 10 is out of range.*0..9"):
        gym.make(ENV_ID, task=10)
    with pytest.raises(ValueError, match="(?s)unknown task None.*pick_up"):
        gym.make(ENV_ID)
    with pytest.raises(ValueError, match="init_state_id 50 is out of range.*0..49"):
        env.reset(options={"init_state_id": 50})
    with pytest.raises(ValueError, match="unknown reset options \\['init_state'\\]"):
        env.reset(options={"init_state": 0})
    env.reset(options={"init_state_id": 0})
    with pytest.raises(ValueError, match="action has shape \\(6,\\), expected \\(7,\\)"):
        env.unwrapped.step(np.zeros(6))
    with pytest.raises(ValueError, match="non-finite entries at indices \\[2\\]"):
        env.unwrapped.step(np.array([0, 0, np.nan, 0, 0, 0, 0]))


def test_task_by_name_equals_task_by_id():
    by_name = LiberoEnv("libero_goal", task="open_the_middle_drawer_of_the_cabinet")
    by_id = LiberoEnv("libero_goal", task=by_name.task_id)
    assert (by_name.task_id, by_name.instruction) == (by_id.task_id, by_id.instruction)
    assert by_name.instruction == "open the middle drawer of the cabinet"
    assert set(by_name.instruction) <= set(string.printable)


def _vector_rollout(mode: str) -> dict:
    kwargs = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}
    if mode == "async":
        # Gymnasium 1.4 snapshots Text observations from shared memory once; pipes carry them correctly.
        # Forking a process that already holds an EGL context (this module's env) hangs the child: spawn.
        kwargs.update(shared_memory=False, context="spawn")
    vector = gym.make_vec(
        ENV_ID, num_envs=2, vectorization_mode=mode, vector_kwargs=kwargs, task=0, image_size=64
    )
    try:
        vector.reset(seed=[0, 1], options={"init_state_id": 5})
        action = np.tile(np.array([0, 0, 0.5, 0, 0, 0, -1], np.float32), (2, 1))
        obs, reward, terminated, truncated, info = vector.step(action)
    finally:
        vector.close()
    return {"obs": obs, "terminated": terminated, "info": info}


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs_step_both_sub_envs_identically(mode):
    result = _vector_rollout(mode)
    obs = result["obs"]
    assert obs["agentview_image"].shape == (2, 64, 64, 3) and obs["state"].shape == (2, 8)
    assert obs["instruction"] == ("pick up the alphabet soup and place it in the basket",) * 2
    np.testing.assert_array_equal(obs["state"][0], obs["state"][1])
    np.testing.assert_array_equal(obs["agentview_image"][0], obs["agentview_image"][1])
    assert list(result["info"]["init_state_id"]) == [5, 5]


def test_no_gl_backend_gives_an_error_naming_what_to_install():
    import subprocess
    import sys

    code = (
        "import vlamergebench.envs\nfrom vlamergebench.envs.rendering import require_gl_backend\n"
        "try:\n    print(require_gl_backend())\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    environment = {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa", "PATH": ""}
    with contextlib.redirect_stderr(io.StringIO()):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=environment
        ).stdout
    if out.startswith("osmesa"):  # pragma: no cover - OSMesa installed here: nothing to check
        pytest.skip("OSMesa is installed on this machine, so the missing-backend path cannot be exercised")
    assert "GLBackendError" in out and "MUJOCO_GL='osmesa'" in out and "apt-get install -y libosmesa6" in out
