"""A small real Gymnasium env, real controllers and a router, to test the evaluation harness without LIBERO.

Importing this module registers ``vlamergebench_test/Point-v0``; pass
``env_id="evalworld:vlamergebench_test/Point-v0"`` so that spawned workers import it too (Gymnasium imports
the module before the lookup). Workers find this module because spawned children inherit the parent's
``sys.path`` (tests prepend this folder).
"""

from __future__ import annotations

import os
import signal
import time

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ENV_ID = "evalworld:vlamergebench_test/Point-v0"
GOALS = {"left": (-0.6, 0.0), "right": (0.6, 0.0), "up": (0.0, 0.6)}
SPEED = 0.02  # per step and unit action: 40 steps cover at most 0.8, so far init states fail


def init_position(init_state_id: int) -> np.ndarray:
    """The fixed start of init state k: a deterministic spiral, some starts too far to reach in time."""
    angle = 2.4 * init_state_id
    radius = 0.1 + 0.09 * (init_state_id % 13)
    return np.array([radius * np.cos(angle), radius * np.sin(angle)], dtype=np.float64)


class PointEnv(gym.Env):
    """A point moving in the plane towards the goal of its task.

    Observation: ``agentview_image`` uint8 (8, 8, 3), ``state`` float32 (2,), ``instruction`` text.
    Action: float32 (2,) in [-1, 1], velocity x SPEED. Success: within 0.05 of the goal (terminates).
    Faults (for tests of fault isolation): init states in ``fault_init_states`` raise in ``step`` on step 3;
    those in ``crash_init_states`` kill the whole process with SIGKILL on step 3 (with ``crash_once_path``:
    only while that file does not exist; the crash creates it, so a retry succeeds).
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: str = "left",
        step_delay_s: float = 0.0,
        fault_init_states=(),
        crash_init_states=(),
        crash_once_path=None,
    ):
        self.task, self.goal = task, np.array(GOALS[task])
        self.step_delay_s = step_delay_s
        self.fault_init_states, self.crash_init_states = set(fault_init_states), set(crash_init_states)
        self.crash_once_path = crash_once_path
        self.observation_space = spaces.Dict(
            {
                "agentview_image": spaces.Box(0, 255, (8, 8, 3), np.uint8),
                "state": spaces.Box(-2, 2, (2,), np.float32),
                "instruction": spaces.Text(64, charset="abcdefghijklmnopqrstuvwxyz "),
            }
        )
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)
        self.position, self.init_state_id, self.steps = np.zeros(2), 0, 0

    def _observation(self):
        image = np.zeros((8, 8, 3), np.uint8)
        col, row = (np.clip((self.position + 1) * 4, 0, 7)).astype(int)
        image[row, col] = 255
        return {
            "agentview_image": image,
            "state": self.position.astype(np.float32),
            "instruction": f"go {self.task}",
        }

    def _info(self):
        success = bool(np.linalg.norm(self.position - self.goal) < 0.05)
        return {"is_success": success, "task": self.task, "suite": "points", "instruction": f"go {self.task}"}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.init_state_id = int((options or {})["init_state_id"])
        self.position, self.steps = init_position(self.init_state_id), 0
        return self._observation(), self._info()

    def step(self, action):
        self.steps += 1
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
        if self.steps == 3 and self.init_state_id in self.crash_init_states:
            if self.crash_once_path is None:
                os.kill(os.getpid(), signal.SIGKILL)
            elif not os.path.exists(self.crash_once_path):
                open(self.crash_once_path, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
        if self.steps == 3 and self.init_state_id in self.fault_init_states:
            raise RuntimeError(f"simulated instability at init state {self.init_state_id}")
        self.position = self.position + SPEED * np.clip(action, -1, 1)
        info = self._info()
        # truncation is left to TimeLimit (the registered max_episode_steps)
        return self._observation(), float(info["is_success"]), info["is_success"], False, info


gym.register("vlamergebench_test/Point-v0", entry_point=PointEnv, max_episode_steps=40)
VLA_ENV_ID = "evalworld:vlamergebench_test/VlaPoint-v0"


class VlaPointEnv(PointEnv):
    """PointEnv with a VLA's observations and actions (LIBERO's keys and shapes), for real tiny VLA policies.

    Observation: ``agentview_image`` and ``wrist_image`` uint8 (16, 16, 3) showing the point, ``state``
    float32 (8,) (the position, then zeros), the instruction. Action: float32 (7,); the first two move the
    point. Leaving the square [-1, 1]^2 ends the episode as a failure, so an episode's length follows the
    policy's actions.
    """

    def __init__(self, task: str = "left"):
        super().__init__(task)
        image = spaces.Box(0, 255, (16, 16, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {
                "agentview_image": image,
                "wrist_image": image,
                "state": spaces.Box(-2, 2, (8,), np.float32),
                "instruction": spaces.Text(64, charset="abcdefghijklmnopqrstuvwxyz "),
            }
        )
        self.action_space = spaces.Box(-1, 1, (7,), np.float32)

    def _observation(self):
        image = np.full((16, 16, 3), 40, np.uint8)
        col, row = (np.clip((self.position + 1) * 8, 0, 15)).astype(int)
        image[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2] = (255, 200, 0)
        state = np.zeros(8, np.float32)
        state[:2] = self.position
        return {"agentview_image": image, "wrist_image": image[::-1].copy(), "state": state,
                "instruction": f"go {self.task}"}  # fmt: skip

    def step(self, action):
        self.steps += 1
        self.position = self.position + 10 * SPEED * np.clip(np.asarray(action)[:2], -1, 1)
        info = self._info()
        ended = info["is_success"] or bool(np.abs(self.position).max() > 1)  # reached, or left the square
        return self._observation(), float(info["is_success"]), ended, False, info


gym.register("vlamergebench_test/VlaPoint-v0", entry_point=VlaPointEnv, max_episode_steps=24)


class GoalSeeker:
    """A proportional controller towards one goal, returning chunks of 4 actions."""

    def __init__(self, goal):
        self.goal, self.resets = np.asarray(goal), 0

    def reset(self):
        self.resets += 1

    def predict(self, observation):
        direction = np.clip((self.goal - observation["state"]) / SPEED, -1, 1)
        return np.repeat(direction[None, :], 4, axis=0)  # (chunk=4, action_dim=2)


class Controllers:
    """A PolicySource: one GoalSeeker per skill (skill name = task name)."""

    def __init__(self, skills=("left", "right")):
        self._policies = {skill: GoalSeeker(GOALS[skill]) for skill in skills}

    @property
    def skills(self):
        return list(self._policies)

    def policy(self, skill):
        return self._policies[skill]


class BatchSeekers(Controllers):
    """A PolicySource whose policies answer a batch of observations at once (``predict_batch``)."""

    def __init__(self, skills=("left", "right")):
        self._policies = {skill: BatchGoalSeeker(GOALS[skill]) for skill in skills}


class BatchGoalSeeker(GoalSeeker):
    """GoalSeeker with ``predict_batch``; counts its calls and the observations they carried."""

    def __init__(self, goal):
        super().__init__(goal)
        self.batch_sizes = []

    def predict_batch(self, observations):
        self.batch_sizes.append(len(observations))
        states = np.stack([observation["state"] for observation in observations])
        directions = np.clip((self.goal - states) / SPEED, -1, 1)
        return np.repeat(directions[:, None, :], 4, axis=1)  # (batch, chunk=4, action_dim=2)


class KeywordRouter:
    """Routes by the instruction's last word, except that ``confuse`` maps some words to other skills."""

    def __init__(self, confuse=None):
        self.confuse = dict(confuse or {})

    def route(self, observation, *, true_skill=None):
        word = str(observation["instruction"]).split()[-1]
        return self.confuse.get(word, word)


class BadShapePolicySource(Controllers):
    """A broken policy: returns actions of the wrong width."""

    def policy(self, skill):
        class Broken:
            def reset(self):
                pass

            def predict(self, observation):
                return np.zeros((4, 3))

        return Broken()
