"""Scripted experts for the SO-101 twin tasks: privileged-state inverse kinematics, joint-target actions.

The expert reads the MuJoCo ``model``/``data`` of the twin it is handed (``model, data = env.unwrapped.sim``)
and never imports ``vlamergebench.envs`` (the README's arrows). It relies on the twin's documented
names: bodies ``cube_red``/``cube_blue``, geom ``target``, site ``gripperframe`` (the fixed finger pad, whose
z axis is the jaw-opening direction and whose x axis points out of the fingers), and the six joint names
below. The arm stands at the origin and reaches along +x; the table is z = 0.

Each task is a list of phases (hover, descend, close, lift, carry, lower, release, retreat; or push). A
moving phase solves IK once, when it starts, for a target point measured then, and walks the joint targets
there at a bounded speed, under the adapter's ``max_step``, so safety clipping leaves the arm joints' actions
alone. The gripper's is clipped while it squeezes a cube (the closed target is more than ``max_step`` below
the blocked jaw), so demonstrations record the action the adapter sent (``info["action_sent"]``).
Actions are absolute targets in LeRobot units: 5 joints in degrees, then gripper 0 (closed)..100 (open).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlamergebench.policies.demos import DemoLayout, DemoWriter

JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
CUBE_HALF_M = 0.015
GRIPPER_OPEN = 55.0  # about 8 cm between the pads: room around a 3 cm cube without swinging the jaw high
GRIPPER_CLOSED = 0.0
# The point between the pads when they hold a 3 cm cube, in the gripperframe site's frame: half a cube plus
# the pad's half-thickness along the jaw-opening (z) axis.
GRASP_OFFSET_M = np.array([0.0, 0.0, 0.02])
DOWN = np.array([0.0, 0.0, -1.0])
# IK keeps this far inside the MJCF joint limits: the adapter's default SafetyLimits stop 2 degrees short of
# them, and a target it clips would leave the expert waiting for a pose it cannot reach.
JOINT_MARGIN_RAD = np.deg2rad(3.0)
# Largest lead of an arm joint's target over its measured position: under the adapter's default max_step
# (8 degrees), so the arm's actions are never clipped, while the servos lag an accelerating target.
MAX_LEAD_DEG = 6.0


@dataclass(frozen=True)
class Phase:
    """One phase of a scripted task.

    Attributes:
        name: What the phase does (also reported by :attr:`SO101ScriptedExpert.phase`).
        goal: Which target point to aim the grasp point at: ``"above_red"``, ``"red"``, ``"above_goal"``,
            ``"goal"``, ``"behind_red"``, ``"push_end"``, ``"up"``; None holds the arm.
        gripper: Gripper target (LeRobot 0..100).
        speed_deg: Largest joint-target change per step, degrees.
        hold_steps: Steps spent in a phase without ``goal`` (closing, opening).
        height_m: Height added to the goal point.
        fraction: For ``"push_end"``: how far along the push, from where it started, to aim.
    """

    name: str
    goal: str | None
    gripper: float
    speed_deg: float = 3.0
    hold_steps: int = 0
    height_m: float = 0.0
    fraction: float = 1.0


_PICK = (
    Phase("hover", "above_red", GRIPPER_OPEN, 4.0, height_m=0.06),
    Phase("descend", "red", GRIPPER_OPEN, 1.5, height_m=0.004),
    Phase("close", None, GRIPPER_CLOSED, hold_steps=14),
    Phase("lift", "up", GRIPPER_CLOSED, 2.0, height_m=0.08),
)
_PLACE = (
    Phase("carry", "above_goal", GRIPPER_CLOSED, 3.0, height_m=0.08),
    Phase("lower", "goal", GRIPPER_CLOSED, 1.5, height_m=0.006),
    Phase("release", None, GRIPPER_OPEN, hold_steps=10),
    Phase("retreat", "up", GRIPPER_OPEN, 3.0, height_m=0.07),
)
_PUSH = (
    Phase("approach", "behind_red", GRIPPER_CLOSED, 4.0, height_m=0.06),
    Phase("descend", "behind_red", GRIPPER_CLOSED, 1.5, height_m=0.0),
    *(Phase(f"push_{i}", "push_end", GRIPPER_CLOSED, 1.5, fraction=i / 4) for i in (1, 2, 3, 4)),
    Phase("retreat", "up", GRIPPER_CLOSED, 3.0, height_m=0.06),
)
TASK_PHASES = {"pick_place_cube": _PICK + _PLACE, "stack_cubes": _PICK + _PLACE, "push_cube": _PUSH}
# SO-101 demos: both twin cameras under their env keys, the 6 joint positions (LeRobot units) as proprio.
SO101_LAYOUT = DemoLayout(cameras={"front": "front", "wrist": "wrist"}, proprio=("joint_states",))
PHASE_TIMEOUT_STEPS = 150  # a stuck phase (dropped cube, blocked arm) ends instead of stalling the episode


def collect_episode(
    env: Any, expert: SO101ScriptedExpert, seed: int, init_state_id: int | None = None
) -> dict:
    """Run ``expert`` for one episode of an SO-101 twin env; the arrays of a LIBERO-layout demo.

    Args:
        env: A ``vlamergebench/SO101-Twin-v0`` env (``TimeLimit`` ends a stuck episode).
        expert: The expert of the env's task; reset here.
        seed: Episode seed.
        init_state_id: Fixed layout id of the task, or None to draw it from ``seed``.

    Returns:
        ``{"actions": (T, 6) the actions the adapter sent, "states": (T, S) sim state before step t,
        "rewards": (T,) uint8, "dones": (T,) uint8, "obs": {camera: (T, H, W, 3) uint8 upright,
        "joint_states": (T, 6)}, "success": bool, "instruction": str}``.
    """
    options = None if init_state_id is None else {"init_state_id": init_state_id}
    observation, info = env.reset(seed=seed, options=options)
    expert.reset()
    cameras = [key for key in observation if key not in ("state", "instruction")]
    steps: dict[str, list] = {
        key: [] for key in ("actions", "states", "rewards", "dones", "joint_states", *cameras)
    }
    done = False
    while not done:
        steps["states"].append(env.unwrapped.get_sim_state())
        steps["joint_states"].append(observation["state"])
        for camera in cameras:
            steps[camera].append(observation[camera])
        observation, reward, terminated, truncated, info = env.step(
            expert.act(*env.unwrapped.sim, observation["state"])
        )
        done = terminated or truncated
        steps["actions"].append(info["action_sent"])
        steps["rewards"].append(reward)
        steps["dones"].append(done)
    return {
        "actions": np.asarray(steps["actions"], dtype=np.float64),
        "states": np.asarray(steps["states"], dtype=np.float64),
        "rewards": np.asarray(steps["rewards"], dtype=np.uint8),
        "dones": np.asarray(steps["dones"], dtype=np.uint8),
        "obs": {
            "joint_states": np.asarray(steps["joint_states"], dtype=np.float64),
            **{camera: np.asarray(steps[camera], dtype=np.uint8) for camera in cameras},
        },
        "success": bool(info["is_success"]),
        "instruction": str(info["instruction"]),
    }


def record_demos(
    env: Any, path: str | Path, num_demos: int, first_init_state: int = 0, max_failures: int = 10
) -> Path:
    """Write ``num_demos`` successful scripted episodes of the env's task to a LIBERO-layout HDF5 file.

    Episode k uses fixed layout ``init_state_id = k`` and seed k, from ``first_init_state`` on; a failed
    episode is skipped (and counted: more than ``max_failures`` raise, naming the failed ids).

    Args:
        env: A ``vlamergebench/SO101-Twin-v0`` env made with the task to record.
        path: Output ``.hdf5`` (written as ``.partial`` until complete).
        num_demos: Successful demos to write.
        first_init_state: First layout id.
        max_failures: Failed episodes tolerated.

    Returns:
        The written file's path.
    """
    from tqdm import tqdm

    task = env.unwrapped.task
    expert, failed = SO101ScriptedExpert(task.name), []
    problem_info = {
        "problem_name": task.name,
        "domain_name": "so101_twin",
        "language_instruction": task.instruction,
    }
    env_args = {
        "env_id": env.spec.id if env.spec else None,
        "task": task.name,
        "image_size": env.unwrapped.image_size,
    }
    with (
        DemoWriter(path, env_name=f"so101_twin/{task.name}", problem_info=problem_info, env_args=env_args,
                   layout=SO101_LAYOUT) as writer,
        tqdm(total=num_demos, desc=f"SO-101 demos {task.name}", unit="demo") as progress,
    ):  # fmt: skip
        init_state = first_init_state
        while writer.num_demos < num_demos:
            demo = collect_episode(env, expert, seed=init_state, init_state_id=init_state)
            if demo["success"]:
                writer.add_demo(demo["actions"], demo["states"], demo["obs"], rewards=demo["rewards"],
                                dones=demo["dones"], attrs={"init_state_id": init_state})  # fmt: skip
                progress.update(1)
            else:
                failed.append(init_state)
                if len(failed) > max_failures:
                    raise RuntimeError(f"SO-101 expert for {task.name} failed on layouts {failed}; stopping")
            init_state += 1
    return writer.path


class SO101ScriptedExpert:
    """Privileged-state expert for one twin task; ``act`` returns the next 6-D joint target.

    Args:
        task: Twin task name (``pick_place_cube``, ``push_cube``, ``stack_cubes``).
    """

    def __init__(self, task: str) -> None:
        if task not in TASK_PHASES:
            raise ValueError(f"no scripted SO-101 expert for task {task!r}; known: {sorted(TASK_PHASES)}")
        self.task = task
        self.reset()

    def reset(self) -> None:
        """Start a new episode from the first phase."""
        self._phase_index = 0
        self._steps_in_phase = 0
        self._command: np.ndarray | None = None
        self._goal: np.ndarray | None = None
        self._push_start: np.ndarray | None = None

    @property
    def phase(self) -> str:
        """Name of the current phase, or ``"done"``."""
        phases = TASK_PHASES[self.task]
        return phases[self._phase_index].name if self._phase_index < len(phases) else "done"

    @property
    def done(self) -> bool:
        """Whether every phase has run (the expert then holds its last target)."""
        return self._phase_index >= len(TASK_PHASES[self.task])

    def act(self, model: Any, data: Any, state: np.ndarray) -> np.ndarray:
        """The next joint target ``float32 (6,)`` for the sim state in ``model``/``data``.

        Args:
            model: The twin's ``mujoco.MjModel``.
            data: The twin's ``mujoco.MjData`` (read only).
            state: Present joint positions in LeRobot units, the env observation's ``state``.
        """
        state = np.asarray(state, dtype=np.float64)
        if self._command is None:
            self._command = state.copy()
        phases = TASK_PHASES[self.task]
        while not self.done:
            phase = phases[self._phase_index]
            if self._goal is None:
                self._goal = self._phase_goal(phase, model, data)
            reached = np.all(np.abs(self._command - self._goal) < 1e-6)
            if phase.goal is None:
                finished = self._steps_in_phase >= phase.hold_steps
            else:
                finished = reached and np.all(np.abs(state[:5] - self._goal[:5]) < 2.0)
            if not (finished or self._steps_in_phase >= PHASE_TIMEOUT_STEPS):
                break
            self._phase_index += 1
            self._steps_in_phase = 0
            self._goal = None
        if not self.done:
            phase = phases[self._phase_index]
            speed = np.array([phase.speed_deg] * 5 + [10.0])
            command = self._command + np.clip(self._goal - self._command, -speed, speed)
            # Never lead the measured arm by more than the adapter lets a step move it.
            command[:5] = np.clip(command[:5], state[:5] - MAX_LEAD_DEG, state[:5] + MAX_LEAD_DEG)
            self._command = command
            self._steps_in_phase += 1
        return self._command.astype(np.float32)

    # --- goals -----------------------------------------------------------------------------------------
    def _phase_goal(self, phase: Phase, model: Any, data: Any) -> np.ndarray:
        arm_deg = self._command[:5].copy()
        if phase.goal is not None:
            point, jaw = self._goal_point(phase, model, data)
            arm_deg = np.rad2deg(solve_ik(model, data, np.deg2rad(arm_deg), point, jaw))
        return np.concatenate([arm_deg, [phase.gripper]])

    def _goal_point(self, phase: Phase, model: Any, data: Any) -> tuple[np.ndarray, np.ndarray]:
        red = data.body("cube_red").xpos.copy()
        grasp = grasp_point(model, data)
        lift = np.array([0.0, 0.0, phase.height_m])
        if phase.goal == "above_red" or phase.goal == "red":
            return red + lift, jaw_axis(red)
        if phase.goal == "up":
            return np.array([grasp[0], grasp[1], CUBE_HALF_M]) + lift, jaw_axis(grasp)
        if phase.goal in ("above_goal", "goal"):
            if self.task == "stack_cubes":
                goal = data.body("cube_blue").xpos.copy() + [0.0, 0.0, 2 * CUBE_HALF_M]
            else:
                goal = np.array([*model.geom("target").pos[:2], CUBE_HALF_M])
            # Steer the cube, not the fingers: shift by where the cube sits in the hand now.
            return goal + (grasp - red) + lift, jaw_axis(goal)
        direction = _push_direction(model, red)
        if phase.goal == "behind_red":
            behind = red - (CUBE_HALF_M + 0.025) * direction
            return np.array([behind[0], behind[1], 0.012 + phase.height_m]), jaw_axis(red)
        if self._push_start is None:
            self._push_start = grasp.copy()
        end = np.array([*model.geom("target").pos[:2], 0.012]) - (CUBE_HALF_M + 0.012) * direction
        return self._push_start + phase.fraction * (end - self._push_start), jaw_axis(red)


def _push_direction(model: Any, red: np.ndarray) -> np.ndarray:
    delta = np.array([*(model.geom("target").pos[:2] - red[:2]), 0.0])
    return delta / max(np.linalg.norm(delta), 1e-9)


def grasp_point(model: Any, data: Any) -> np.ndarray:
    """World position of the point between the pads (:data:`GRASP_OFFSET_M` in the gripperframe site)."""
    site = model.site("gripperframe").id
    return data.site_xpos[site] + data.site_xmat[site].reshape(3, 3) @ GRASP_OFFSET_M


def jaw_axis(point: np.ndarray) -> np.ndarray:
    """Horizontal jaw-opening direction for a top-down grasp at ``point``: along the arm's reach.

    The cubes are laid out axis-aligned, so of their face normals the one nearest the radial direction is
    picked; the jaws then close on two opposite faces with the least wrist roll.
    """
    radial = np.array([point[0], point[1], 0.0]) / max(np.hypot(point[0], point[1]), 1e-9)
    normals = [np.array(v, dtype=np.float64) for v in ((1, 0, 0), (0, 1, 0), (-1, 0, 0), (0, -1, 0))]
    return max(normals, key=lambda normal: float(normal @ radial))


def solve_ik(
    model: Any, data: Any, arm_init_rad: np.ndarray, point: np.ndarray, jaw: np.ndarray, iterations: int = 100
) -> np.ndarray:
    """Arm joint angles (5, radians) putting the grasp point at ``point``, fingers down, jaws along ``jaw``.

    Damped least squares on position (3 rows) and orientation (3 rows, weighted 0.3) on a private
    ``MjData``; every iterate is clipped to :data:`JOINT_MARGIN_RAD` inside the joint limits. The 5-DOF arm
    can meet this 6-D goal because a top-down yaw is pan plus wrist roll. Two starts, ``arm_init_rad`` and
    a canonical elbow-up pose aimed at ``point``, keep a long move from ending in a poor local minimum (with
    the wrist at its limit); the solution with the smaller error wins.
    """
    import mujoco

    scratch = mujoco.MjData(model)
    scratch.qpos[:] = data.qpos
    joints = [model.joint(name) for name in JOINT_NAMES[:5]]
    low, high = np.array([joint.range for joint in joints]).T
    low, high = low + JOINT_MARGIN_RAD, high - JOINT_MARGIN_RAD
    aimed = np.array([-np.arctan2(point[1], point[0]), 0.0, 0.5, 1.2, 0.0])  # positive pan turns towards -y
    solutions = [
        _descend(model, scratch, np.clip(start, low, high), point, jaw, (low, high), iterations)
        for start in (np.asarray(arm_init_rad, dtype=np.float64), aimed)
    ]
    return min(solutions, key=lambda solution: solution[1])[0]


def _descend(
    model: Any,
    scratch: Any,
    q: np.ndarray,
    point: np.ndarray,
    jaw: np.ndarray,
    limits: tuple,
    iterations: int,
) -> tuple[np.ndarray, float]:
    """Damped least squares from ``q``; returns the joint angles and their weighted task error."""
    import mujoco

    site = model.site("gripperframe").id
    joints = [model.joint(name) for name in JOINT_NAMES[:5]]
    qpos_addresses = np.array([joint.qposadr[0] for joint in joints])
    dof_addresses = np.array([joint.dofadr[0] for joint in joints])
    wanted = np.column_stack([DOWN, np.cross(jaw, DOWN), jaw])  # site x: out of the fingers; z: jaw opening
    position_jac, rotation_jac = np.zeros((3, model.nv)), np.zeros((3, model.nv))
    for _ in range(iterations + 1):
        scratch.qpos[qpos_addresses] = q
        mujoco.mj_kinematics(model, scratch)
        mujoco.mj_comPos(model, scratch)
        rotation = scratch.site_xmat[site].reshape(3, 3)
        here = scratch.site_xpos[site] + rotation @ GRASP_OFFSET_M
        quat, rotation_error = np.empty(4), np.empty(3)
        mujoco.mju_mat2Quat(quat, (wanted @ rotation.T).ravel())
        mujoco.mju_quat2Vel(rotation_error, quat, 1.0)
        error = np.concatenate([point - here, 0.3 * rotation_error])
        if np.linalg.norm(error[:3]) < 2e-4 and np.linalg.norm(rotation_error) < 2e-3:
            break
        mujoco.mj_jac(model, scratch, position_jac, None, here, model.site_bodyid[site])
        mujoco.mj_jacSite(model, scratch, None, rotation_jac, site)
        jac = np.vstack([position_jac[:, dof_addresses], 0.3 * rotation_jac[:, dof_addresses]])
        q = np.clip(q + jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(6), error), *limits)
    return q, float(np.linalg.norm(error))
