"""RoboTwinEnv's contract against a pure-Python task object with RoboTwin 2.0's task surface (no SAPIEN here).

The fake implements what the adapter calls on RoboTwin's ``Base_Task`` (``setup_demo``, ``play_once``,
``check_success``, ``take_action``, ``get_obs``, ``close_env``, ``set_instruction``, ``take_action_cnt``,
``step_lim``, ``eval_success``, ``plan_success``, ``data_type``) with RoboTwin's conventions: ``step_lim``
read in eval mode, ``take_action`` a no-op once the limit is reached or after success, ``UnStableError`` for
unstable seeds, and an instruction generator that fills placeholders and shuffles with Python's ``random``.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.envs.chunking import ChunkedActions
from vlamergebench.envs.robotwin import (
    EPISODES_PER_TASK,
    MAX_ERRORS_IN_A_ROW,
    REQUIRES,
    STEP_LIMITS,
    TASKS,
    RoboTwinEnv,
)
from vlamergebench.envs.robotwin_checkout import RoboTwinCheckout, RoboTwinUnavailable

TASK = "handover_block"
ENV_ID = f"vlamergebench/RoboTwin-Clean-{TASK}-v0"
CAMERAS = ("head_camera", "left_camera", "right_camera")


class UnStableError(Exception):
    """RoboTwin's envs.utils.create_actor.UnStableError."""


def unstable(seed: int) -> bool:
    return seed % 7 == 3


def expert_fails(seed: int) -> bool:
    return seed % 5 == 4


class FakeTask:
    """A block at ``goal`` (from the seed); success when the left waist joint points at it, gripper closed."""

    def __init__(self, step_limit_override: int | None = None, broken: bool = False) -> None:
        self.step_limit_override, self.broken = step_limit_override, broken
        self.data_type = {"rgb": True, "qpos": True, "endpose": True}
        self.closed, self.frames_read, self.instruction = 0, 0, None

    def setup_demo(self, now_ep_num: int, seed: int, is_test: bool, **kwargs) -> None:
        if self.broken:
            raise ValueError("assets/embodiments/aloha-agilex/config.yml not found")
        if unstable(seed):
            raise UnStableError(f"Objects is unstable in seed({seed})")
        self.seed, self.task_name = seed, kwargs["task_name"]
        self.goal = float(np.random.default_rng(seed).uniform(-0.5, 0.5))
        self.joints = np.zeros(14)
        self.joints[[6, 13]] = 1.0  # grippers open
        self.take_action_cnt, self.eval_success, self.plan_success = 0, False, True
        self.step_lim = self.step_limit_override or (
            STEP_LIMITS[self.task_name] if kwargs["eval_mode"] else None
        )

    def play_once(self) -> dict:
        self.plan_success = not expert_fails(self.seed)
        if self.plan_success:
            self.joints[0], self.joints[6] = self.goal, 0.0
        return {"info": {"{A}": "red block", "{a}": "left" if self.goal < 0 else "right"}}

    def check_success(self) -> bool:
        return abs(self.joints[0] - self.goal) < 0.02 and self.joints[6] < 0.5

    def take_action(self, action: np.ndarray, action_type: str = "qpos") -> None:
        if self.take_action_cnt == self.step_lim or self.eval_success:
            return
        self.take_action_cnt += 1
        if action_type == "qpos":
            self.joints = np.asarray(action, dtype=np.float64).copy()
        self.eval_success = self.check_success()

    def get_obs(self) -> dict:
        observation = {camera: {"intrinsic_cv": np.eye(3)} for camera in CAMERAS}
        if self.data_type["rgb"]:
            self.frames_read += 1
            for index, camera in enumerate(CAMERAS):  # D435: 240 x 320; pixels encode the state
                frame = np.full((240, 320, 3), index * 40, np.uint8)
                frame[:, :, 1] = np.uint8(128 + 100 * np.tanh(self.joints[0]))
                frame[:, :, 2] = np.uint8(200 * self.joints[6])
                observation[camera]["rgb"] = frame
        pose = np.array([0.1, 0.2, 0.9, 1.0, 0.0, 0.0, 0.0])
        return {
            "observation": observation,
            "joint_action": {"vector": self.joints.copy()},
            "endpose": {"left_endpose": pose, "left_gripper": self.joints[6], "right_endpose": pose,
                        "right_gripper": self.joints[13]},
        }  # fmt: skip

    def set_instruction(self, instruction: str | None = None) -> None:
        self.instruction = instruction

    def close_env(self, clear_cache: bool = False) -> None:
        self.closed += 1


class FakeBackend:
    """RoboTwinCheckout's surface over :class:`FakeTask`."""

    arm_dims = (6, 6)

    def __init__(self, **task_kwargs) -> None:
        self.task_kwargs, self.tasks, self.sessions = task_kwargs, [], 0

    @contextlib.contextmanager
    def session(self):
        self.sessions += 1
        yield

    def make_task(self, task: str) -> FakeTask:
        self.tasks.append(FakeTask(**self.task_kwargs))
        return self.tasks[-1]

    def setup_kwargs(self, task: str, config: str) -> dict:
        return {"task_name": task, "task_config": config, "eval_mode": True, "render_freq": 0}

    def describe(self, task: str, episode_info: dict | None, instruction_type: str) -> list[str]:
        if episode_info is None:
            return ["use one arm to grasp the red block and hand it over"]
        templates = [f"{instruction_type} {i}: pass {{A}} with {{a}}" for i in range(6)]
        random.shuffle(templates)  # RoboTwin's generator shuffles with the global `random`
        out = [
            t.replace("{A}", episode_info["{A}"]).replace("{a}", f"the {episode_info['{a}']} arm")
            for t in templates
        ]
        return out


def usable_seeds(start: int, count: int, expert_check: bool = True) -> list[int]:
    seeds, seed = [], start
    while len(seeds) < count:
        if not unstable(seed) and not (expert_check and expert_fails(seed)):
            seeds.append(seed)
        seed += 1
    return seeds


@pytest.fixture
def env():
    made = gym.make(ENV_ID, backend=FakeBackend(), image_size=64)
    yield made
    made.close()


def _solve(env) -> np.ndarray:
    action = np.zeros(14, np.float32)
    action[0] = env.unwrapped.task_env.goal
    return action


def test_every_task_is_registered_per_domain_with_its_step_limit():
    assert len(TASKS) == 50
    for domain in ("Clean", "Randomized"):
        for task, limit in STEP_LIMITS.items():
            spec = gym.spec(f"vlamergebench/RoboTwin-{domain}-{task}-v0")
            assert spec.max_episode_steps == limit and spec.kwargs == {"task": task, "domain": domain.lower()}
    (listed,) = RoboTwinEnv.list_tasks(**gym.spec(ENV_ID).kwargs)
    assert listed["name"] == TASK and listed["requires"] == REQUIRES and listed["step_limit"] == 800
    assert len(RoboTwinEnv.list_tasks()) == 50


def test_check_env_spaces_and_observation(env):
    check_env(env.unwrapped, skip_render_check=True)
    assert env.action_space.shape == (14,) and env.action_space.low[6] == 0 and env.action_space.high[13] == 1
    observation, info = env.reset(seed=0, options={"init_state_id": 0})
    assert set(observation) == {f"{c}_image" for c in CAMERAS} | {"state", "instruction"}
    assert observation["head_camera_image"].shape == (64, 64, 3)  # resized from RoboTwin's 240 x 320
    assert observation["state"].dtype == np.float32 and observation["state"].shape == (14,)
    assert info["suite"] == "robotwin_clean" and info["step_limit"] == 800 and not info["is_success"]


def test_protocol_episodes_follow_the_official_seed_sequence(env):
    expected = usable_seeds(100_000, 8)
    seeds = [env.reset(options={"init_state_id": k})[1]["robotwin_seed"] for k in (7, 0, 3)]
    assert seeds == [expected[7], expected[0], expected[3]]  # episode k <-> k-th usable seed, in any order
    other = gym.make(ENV_ID, backend=FakeBackend(), protocol_seed=1, expert_check=False)
    assert other.reset(options={"init_state_id": 2})[1]["robotwin_seed"] == usable_seeds(200_000, 3, False)[2]
    with pytest.raises(ValueError, match=f"valid ids are 0..{EPISODES_PER_TASK - 1}"):
        env.reset(options={"init_state_id": EPISODES_PER_TASK})


def test_instruction_comes_from_the_generator_and_is_reproducible(env):
    random.seed(1234)
    before = random.getstate()
    first = env.reset(seed=5, options={"init_state_id": 4})[0]["instruction"]
    assert random.getstate() == before  # the generator's shuffles never leak into the caller's RNG
    assert first.startswith("unseen ") and "red block" in first and " arm" in first
    assert env.reset(seed=5, options={"init_state_id": 4})[0]["instruction"] == first
    assert env.unwrapped.task_env.instruction == first  # RoboTwin's own set_instruction got it too
    seen = gym.make(ENV_ID, backend=FakeBackend(), instruction_type="seen", expert_check=False)
    assert seen.reset(options={"init_state_id": 0})[0]["instruction"].startswith(
        "use one arm"
    )  # no expert info


def test_success_terminates_and_the_step_limit_truncates(env):
    env.reset(seed=0, options={"init_state_id": 1})
    _, reward, terminated, truncated, info = env.step(_solve(env))
    assert (reward, terminated, truncated, info["is_success"]) == (1.0, True, False, True)
    env.reset(seed=0, options={"init_state_id": 1})
    idle = np.zeros(14, np.float32)
    idle[0] = env.unwrapped.task_env.goal + 0.5
    for step in range(1, STEP_LIMITS[TASK] + 1):
        _, reward, terminated, truncated, info = env.step(idle)
        assert truncated == (step == STEP_LIMITS[TASK]) and not terminated and reward == 0.0
    assert info["step"] == STEP_LIMITS[TASK]  # RoboTwin's counter and TimeLimit end together


def test_mismatched_step_limit_and_a_broken_setup_raise():
    bad = gym.make(ENV_ID, backend=FakeBackend(step_limit_override=123))
    with pytest.raises(RuntimeError, match="step limit is 123, the registered id's 800"):
        bad.reset(options={"robotwin_seed": 0})
    broken = gym.make(ENV_ID, backend=FakeBackend(broken=True))
    with pytest.raises(RuntimeError, match="all raised.*config.yml not found") as caught:
        broken.reset(options={"init_state_id": 0})
    assert f"{100_000}..{100_000 + MAX_ERRORS_IN_A_ROW - 1}" in str(caught.value)


def test_chunked_execution_reads_frames_once(env):
    chunked = ChunkedActions(env, chunk_size=4)
    chunked.reset(seed=0, options={"robotwin_seed": 11})
    task = env.unwrapped.task_env
    reads = task.frames_read
    chunk = np.zeros((4, 14), np.float32)
    chunk[:, 0] = np.linspace(-0.9, -0.6, 4)  # never at the goal (|goal| <= 0.5)
    observation, _, _, _, info = chunked.step(chunk)
    assert info["executed_steps"] == 4 and task.frames_read == reads + 1 and task.take_action_cnt == 4
    assert observation["head_camera_image"][0, 0, 1] == np.uint8(128 + 100 * np.tanh(-0.6))  # the last state


def test_end_effector_mode_and_bad_input():
    ee = gym.make(ENV_ID, backend=FakeBackend(), action_type="ee")
    assert ee.action_space.shape == (16,)
    assert ee.reset(options={"robotwin_seed": 1})[0]["state"].shape == (16,)
    env = gym.make(ENV_ID, backend=FakeBackend())
    env.reset(options={"robotwin_seed": 1})
    with pytest.raises(ValueError, match=r"expected \(14,\)"):
        env.step(np.zeros(16))
    with pytest.raises(ValueError, match=r"non-finite entries at indices \[2\]"):
        env.step(np.array([0, 0, np.inf] + [0] * 11))
    with pytest.raises(ValueError, match="at most one of"):
        env.reset(options={"init_state_id": 0, "robotwin_seed": 3})
    with pytest.raises(ValueError, match="unknown RoboTwin task"):
        RoboTwinEnv(task="fold_towel", backend=FakeBackend())
    with pytest.raises(ValueError, match="domain must be one of"):
        RoboTwinEnv(task=TASK, domain="hard", backend=FakeBackend())


def test_missing_robotwin_is_named_with_what_to_install(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("ROBOTWIN_ROOT", raising=False)
    with pytest.raises(RoboTwinUnavailable, match="ROBOTWIN_ROOT is not set"):
        gym.make(ENV_ID)
    with pytest.raises(RoboTwinUnavailable, match="not a RoboTwin 2.0 checkout"):
        RoboTwinCheckout(tmp_path)
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "_base_task.py").write_text("class Base_Task: ...\n")
    (tmp_path / "task_config").mkdir()
    (tmp_path / "task_config" / "_eval_step_limit.yml").write_text("handover_block: 800\n")
    with pytest.raises(RoboTwinUnavailable) as caught:
        RoboTwinCheckout(tmp_path)
    message = str(caught.value)
    assert "assets/embodiments/aloha-agilex/config.yml" in message and "_download_assets.sh" in message
    assert "'sapien' is missing" in message and "'curobo' is missing" in message
    assert "no CUDA GPU" in message  # this machine has none
