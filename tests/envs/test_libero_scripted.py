"""Scripted LIBERO experts on the real simulator: a goal without a plan is named, a knob turn succeeds.

(Pick-and-place success, replay and the demo file are covered by tests/eval/test_collect.py.)
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.policies.scripted.libero import LiberoScriptedExpert, UnsupportedTaskError


def test_goal_without_a_plan_raises_naming_it():
    env = gym.make("vlamergebench/LIBERO-90-v0", task="KITCHEN_SCENE10_close_the_top_drawer_of_the_cabinet")
    try:
        with pytest.raises(UnsupportedTaskError, match="close.*wooden_cabinet_1_top_region"):
            LiberoScriptedExpert(env.unwrapped.sim_env)
    finally:
        env.close()


def test_stove_knob_turn_reaches_real_success():
    """LIBERO-Goal 'turn on the stove' (~62 steps): grip the knob lever and turn the wrist."""
    env = gym.make("vlamergebench/LIBERO-Goal-v0", task="turn_on_the_stove", image_size=64)
    try:
        env.unwrapped.set_camera_rendering(False)
        env.reset(seed=0, options={"init_state_id": 0})
        expert = LiberoScriptedExpert(env.unwrapped.sim_env)
        expert.reset()
        phases = []
        terminated = truncated = False
        while not (terminated or truncated):
            action = expert.act()
            assert action.shape == (7,) and np.all(np.abs(action) <= 1.0)
            phases.append(expert.phase)
            _, reward, terminated, truncated, info = env.step(action)
        assert terminated and reward == 1.0 and info["is_success"]
        assert env.unwrapped.sim_env.check_success()
        assert "turn" in phases and len(phases) < 150
    finally:
        env.close()
