"""Robot initial-state axis, in two distinctly named modes that share one table of joint offsets.

The offsets are LIBERO-Plus's: its ``MountedPanda<N>`` (N = 1..500) sets
``init_qpos = q0 + 0.1 * ceil(N / 100) * u_N``, where q0 is LIBERO's Panda home pose and u_N the N-th
unit vector of Gaussian draws from ``numpy.random.seed(42)`` (its ``envs/robots/new_init.py``; values
printed with 8 decimals). We regenerate the same sequence. Our level L is the offset norm 0.1 L rad
(LIBERO-Plus's N in 100 (L - 1) + 1 .. 100 L).

* ``robot_init`` (LIBERO-Plus-compatible): the robot's ``init_qpos`` is the offset pose, so robosuite's reset
  puts the arm there and builds the OSC controller; LIBERO's init state then restores the original arm pose
  while the controller keeps its state from the offset pose, and the no-op settle steps drift the arm
  (measured here: 15.6 cm for N = 401, 4.1 cm for N = 491; LIBERO-Plus on its own stack: about 16 and 4 cm,
  docs/perturbations.md). This is the quirk the published LIBERO-Plus numbers include.
* ``robot_init_clean``: LIBERO's init state first, then the arm joints are set to the offset pose (zero
  velocity) and the controller is re-initialised there, so the episode really starts from the offset pose.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

# LIBERO's MountedPanda home pose (robosuite Panda init_qpos), rad.
PANDA_HOME_QPOS = np.array([0.0, -1.61037389e-01, 0.00, -2.44459747e00, 0.00, 2.22675220e00, np.pi / 4])
VARIANTS_PER_LEVEL = 100


@functools.cache
def liberoplus_init_qpos_table() -> np.ndarray:
    """LIBERO-Plus's ``MountedPanda<N>.init_qpos`` for N = 1..500: ``float64 (500, 7)``, row N - 1."""
    legacy = np.random.RandomState(42)  # the legacy generator and seed LIBERO-Plus's generator script uses
    rows = []
    for index in range(5 * VARIANTS_PER_LEVEL):
        direction = legacy.randn(len(PANDA_HOME_QPOS))
        direction /= np.linalg.norm(direction)
        rows.append(PANDA_HOME_QPOS + direction * 0.1 * (index // VARIANTS_PER_LEVEL + 1))
    table = np.round(np.array(rows), 8)  # the class files carry 8 decimals
    table.setflags(write=False)
    return table


def sample_variant(level: int, rng: np.random.Generator) -> int:
    """LIBERO-Plus variant N (1..500) whose offset norm is 0.1 * ``level`` rad."""
    return (level - 1) * VARIANTS_PER_LEVEL + 1 + int(rng.integers(VARIANTS_PER_LEVEL))


def offset_qpos(variant: int) -> np.ndarray:
    """The arm joint positions (7,) of LIBERO-Plus variant ``variant`` (1..500)."""
    if not 1 <= variant <= 5 * VARIANTS_PER_LEVEL:
        raise ValueError(f"robot-init variant must be in 1..500, got {variant}")
    return liberoplus_init_qpos_table()[variant - 1].copy()


def set_reset_pose(robot: Any, qpos: np.ndarray) -> None:
    """LIBERO-Plus-compatible mode: the pose robosuite's next reset puts the arm in (``robot.init_qpos``)."""
    if len(robot.init_qpos) != len(qpos):
        raise ValueError(f"robot has {len(robot.init_qpos)} arm joints, the offset pose has {len(qpos)}")
    robot.init_qpos = np.array(qpos, dtype=np.float64)


def move_arm_cleanly(sim_env: Any, qpos: np.ndarray) -> None:
    """Clean mode, after the init state: the arm at rest at ``qpos``, its controller re-initialised there."""
    robot = sim_env.env.robots[0]
    sim = sim_env.sim
    joints = robot._ref_joint_pos_indexes  # qpos addresses of the arm joints (robosuite's own bookkeeping)
    if len(joints) != len(qpos):
        raise ValueError(f"robot has {len(joints)} arm joints, the offset pose has {len(qpos)}")
    sim.data.qpos[joints] = qpos
    sim.data.qvel[robot._ref_joint_vel_indexes] = 0.0
    sim.forward()
    # Re-reads the end-effector state and resets the OSC goal and nullspace target to the new pose.
    robot.controller.update_initial_joints(np.array(qpos, dtype=np.float64))
