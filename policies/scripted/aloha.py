"""Scripted experts for the bimanual ALOHA tasks: privileged-state waypoints, analytic IK, joint targets.

gym-aloha's own scripted policies (in its repository, ACT's design) steer mocap bodies in a separate
end-effector simulation. Ours act directly in the joint-controlled env, so a demonstration's actions are the
env's 14-D joint targets ``[left 6 joints, left gripper, right 6 joints, right gripper]`` (grippers
0 closed .. 1 open). The expert reads the MuJoCo ``model``/``data`` it is handed (``model, data =
env.unwrapped.sim``) and never imports ``vlamergebench.envs`` (the README's arrows). It relies on
gym-aloha's MJCF names: arm bodies ``vx300s_{left,right}/...``, object bodies ``box``, ``peg``, ``socket``.

Each arm follows timed waypoints of a tool point (TCP) pose: position, yaw, pitch (down is positive), roll.
Between waypoints the pose is interpolated linearly and turned into joint targets by closed-form IK: the
ViperX's three wrist axes meet in one point, so the wrist centre fixes waist, shoulder and elbow, and the
wrist's roll-pitch-roll angles follow from the orientation. Two details keep the wrist out of trouble. While
travelling, the yaw is "natural" (the azimuth from the arm's base to the TCP), so the wrist never has to
yaw while its pitch passes through zero (the singularity where its two roll joints align); and near that
singularity the forearm roll is held and the other two angles absorb the rest. Grasps use a 60-degree
pitch with the fingers closing across world y. Insertion servos the peg onto the socket's axis, using the
peg-in-hand offset measured when the servo starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlamergebench.policies.demos import DemoLayout, DemoWriter

TCP_OFFSET_M = 0.13  # along gripper_link x: between the finger pads (they span 0.064..0.154 m), 2.4 cm in
GRASP_PITCH_RAD = np.pi / 3
SINGULAR_SIN = 0.05  # |sin(wrist_angle)| below this: hold the forearm roll (wrist singularity)
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
# Height of each object's centre once resting on the table (gym-aloha drops them from z = 0.05).
REST_Z_M = {"box": 0.02, "peg": 0.01, "socket": 0.022}
TASKS = ("transfer_cube", "insertion")


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _wrap(angle: float) -> float:
    return (angle + np.pi) % (2 * np.pi) - np.pi


class ViperXIK:
    """Closed-form inverse kinematics of one ViperX 300 6-DoF arm of gym-aloha's MJCF, TCP pose -> 6 joints.

    Args:
        model: The ``mujoco.MjModel``; link offsets, base pose and joint limits are read from it.
        side: ``"left"`` or ``"right"``.
    """

    def __init__(self, model: Any, side: str) -> None:
        import mujoco

        def body(name: str) -> int:
            return model.body(f"vx300s_{side}/{name}").id

        data = mujoco.MjData(model)
        mujoco.mj_kinematics(model, data)
        base = model.body(f"vx300s_{side}").id
        self.base_pos, self.base_rot = data.xpos[base].copy(), data.xmat[base].reshape(3, 3).copy()
        self.shoulder = model.body_pos[body("shoulder_link")] + model.body_pos[body("upper_arm_link")]
        upper = model.body_pos[body("upper_forearm_link")]  # (x, 0, z) from the shoulder pivot
        self.upper_len, self.upper_angle = (
            float(np.hypot(upper[0], upper[2])),
            float(np.arctan2(upper[2], upper[0])),
        )
        self.fore_len = float(
            model.body_pos[body("lower_forearm_link")][0] + model.body_pos[body("wrist_link")][0]
        )
        self.hand_len = float(model.body_pos[body("gripper_link")][0]) + TCP_OFFSET_M  # wrist centre -> TCP
        joints = [model.joint(f"vx300s_{side}/{name}").id for name in ARM_JOINTS]
        self.low, self.high = model.jnt_range[joints, 0].copy(), model.jnt_range[joints, 1].copy()

    def solve(self, pos: np.ndarray, rot: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Joint targets (6,) for TCP at ``pos`` with orientation ``rot``, on the branch nearest ``previous``.

        Out-of-reach targets give the nearest reachable elbow angle; results are clipped to the joint limits.
        """
        pos_b, rot_b = self.base_rot.T @ (pos - self.base_pos), self.base_rot.T @ rot
        wrist = pos_b - self.hand_len * rot_b[:, 0] - self.shoulder
        waist = np.arctan2(wrist[1], wrist[0])
        reach, height = np.hypot(wrist[0], wrist[1]), wrist[2]
        cos_elbow = (reach**2 + height**2 - self.upper_len**2 - self.fore_len**2) / (
            2 * self.upper_len * self.fore_len
        )
        bend = -np.arccos(np.clip(cos_elbow, -1.0, 1.0))  # elbow up
        lift = np.arctan2(height, reach) - np.arctan2(
            self.fore_len * np.sin(bend), self.upper_len + self.fore_len * np.cos(bend)
        )
        shoulder, elbow = self.upper_angle - lift, -bend - self.upper_angle
        wrist_rot = (_rot_z(waist) @ _rot_y(shoulder + elbow)).T @ rot_b  # = Rx(roll) Ry(pitch) Rx(rotate)
        pitch = np.arccos(np.clip(wrist_rot[0, 0], -1.0, 1.0))
        if np.sin(pitch) < SINGULAR_SIN:
            roll = previous[3]
            rest = _rot_x(roll).T @ wrist_rot
            branches = [(roll, np.arctan2(-rest[2, 0], rest[0, 0]), np.arctan2(-rest[1, 2], rest[1, 1]))]
        else:
            branches = [
                (
                    np.arctan2(wrist_rot[1, 0], -wrist_rot[2, 0]),
                    pitch,
                    np.arctan2(wrist_rot[0, 1], wrist_rot[0, 2]),
                ),
                (
                    np.arctan2(-wrist_rot[1, 0], wrist_rot[2, 0]),
                    -pitch,
                    np.arctan2(-wrist_rot[0, 1], -wrist_rot[0, 2]),
                ),
            ]
        best, best_cost = None, np.inf
        for roll, bend_w, rotate in branches:
            q = np.array([waist, shoulder, elbow, roll, bend_w, rotate])
            for i in (
                3,
                5,
            ):  # the roll joints: the 2*pi-equivalent nearest the previous target, inside limits
                q[i] = previous[i] + _wrap(q[i] - previous[i])
                q[i] += 2 * np.pi * (int(q[i] < self.low[i]) - int(q[i] > self.high[i]))
            outside = np.sum(np.maximum(self.low - q, 0) + np.maximum(q - self.high, 0))
            cost = 100.0 * outside + np.sum(np.abs(q - previous))
            if cost < best_cost:
                best, best_cost = q, cost
        return np.clip(best, self.low, self.high)


Target = np.ndarray | Callable[[Any, Any], np.ndarray]  # a position, or f(model, data) -> position


@dataclass(frozen=True)
class Waypoint:
    """Where one arm's TCP should be at step ``t``.

    Attributes:
        t: Step index (50 Hz).
        pos: World position (m), or a function of ``(model, data)`` evaluated every step (servoing).
        gripper: Normalised gripper target, 0 closed .. 1 open.
        yaw: World yaw of the gripper's x axis; None = the azimuth from the arm's base to the TCP.
        pitch: Downward tilt of the gripper's x axis (rad).
        roll: Rotation about the gripper's x axis (rad); pi/2 turns the fingers to close vertically.
    """

    t: int
    pos: Target
    gripper: float
    yaw: float | None = None
    pitch: float = GRASP_PITCH_RAD
    roll: float = 0.0


def _body_pos(model: Any, data: Any, name: str) -> np.ndarray:
    return data.xpos[model.body(name).id].copy()


def _tcp(model: Any, data: Any, side: str) -> tuple[np.ndarray, np.ndarray]:
    body = model.body(f"vx300s_{side}/gripper_link").id
    rot = data.xmat[body].reshape(3, 3).copy()
    return data.xpos[body] + TCP_OFFSET_M * rot[:, 0], rot


def _resting(model: Any, data: Any, name: str) -> np.ndarray:
    pos = _body_pos(model, data, name)
    pos[2] = REST_Z_M[name]
    return pos


def _start(model: Any, data: Any, side: str) -> Waypoint:
    pos, rot = _tcp(model, data, side)
    return Waypoint(0, pos, 0.0, None, float(np.arcsin(-rot[2, 0])), float(np.arctan2(rot[2, 1], rot[2, 2])))


def _pick(obj: np.ndarray, yaw: float, t0: int = 0) -> list[Waypoint]:
    """Hover (natural yaw), square up, descend, close: the first grasp of both tasks."""
    above = obj + [0.0, 0.0, 0.10]
    return [
        Waypoint(t0 + 45, above, 1.0),
        Waypoint(t0 + 60, above, 1.0, yaw),
        Waypoint(t0 + 100, obj, 1.0, yaw),
        Waypoint(t0 + 125, obj, 0.0, yaw),
    ]


def plan_transfer_cube(model: Any, data: Any) -> dict[str, list[Waypoint]]:
    """Right arm lifts the cube to a meeting point; the left comes in level, fingers vertical, and grips."""
    cube, meet = _resting(model, data, "box"), np.array([0.0, 0.5, 0.22])
    side_on = {"yaw": 0.0, "pitch": 0.0, "roll": np.pi / 2}
    right = [
        _start(model, data, "right"),
        *_pick(cube, np.pi),
        Waypoint(180, meet, 0.0, np.pi),
        Waypoint(400, meet, 0.0, np.pi),
    ]
    left = [
        _start(model, data, "left"),
        Waypoint(120, meet + [-0.15, 0, 0], 1.0, **side_on),
        Waypoint(190, meet + [-0.15, 0, 0], 1.0, **side_on),
        Waypoint(240, meet + [-0.03, 0, 0], 1.0, **side_on),
        Waypoint(270, meet + [-0.03, 0, 0], 0.0, **side_on),
        Waypoint(400, meet + [-0.03, 0, 0], 0.0, **side_on),
    ]
    return {"left": left, "right": right}


def plan_insertion(model: Any, data: Any) -> dict[str, list[Waypoint]]:
    """Both arms pick up their object and meet; the right arm then slides the peg along the socket's axis."""
    peg, socket, meet = (
        _resting(model, data, "peg"),
        _resting(model, data, "socket"),
        np.array([0.0, 0.5, 0.15]),
    )
    held: dict[str, np.ndarray] = {}

    def along_socket(depth_m: float) -> Callable[[Any, Any], np.ndarray]:
        def target(model: Any, data: Any) -> np.ndarray:
            peg_now, body = _body_pos(model, data, "peg"), model.body("socket").id
            if "offset" not in held:  # TCP - peg, fixed once the servo starts (a dropped peg is not chased)
                offset = _tcp(model, data, "right")[0] - peg_now
                held["offset"] = offset * min(1.0, 0.05 / max(np.linalg.norm(offset), 1e-9))
            axis = data.xmat[body].reshape(3, 3)[:, 0]
            return np.clip(
                data.xpos[body] + depth_m * axis + held["offset"], [-0.3, 0.2, 0.03], [0.4, 0.8, 0.4]
            )

        return target

    right = [
        _start(model, data, "right"),
        *_pick(peg, np.pi),
        Waypoint(175, meet + [0.20, 0, 0], 0.0, np.pi),
        Waypoint(200, along_socket(0.20), 0.0, np.pi),
        Waypoint(280, along_socket(0.08), 0.0, np.pi),
        Waypoint(400, along_socket(0.08), 0.0, np.pi),
    ]
    left = [
        _start(model, data, "left"),
        *_pick(socket, 0.0),
        Waypoint(175, meet + [-0.05, 0, 0], 0.0, 0.0),
        Waypoint(400, meet + [-0.05, 0, 0], 0.0, 0.0),
    ]
    return {"left": left, "right": right}


PLANS = {"transfer_cube": plan_transfer_cube, "insertion": plan_insertion}


def _interpolate(waypoints: list[Waypoint], step: int, model: Any, data: Any, base_xy: np.ndarray) -> tuple:
    """TCP ``(pos, rot, gripper)`` at ``step`` along ``waypoints`` (the last one holds after its time)."""
    start, end, fraction = waypoints[-1], waypoints[-1], 1.0
    for first, second in zip(waypoints[:-1], waypoints[1:], strict=True):
        if first.t <= step < second.t:
            start, end, fraction = first, second, (step - first.t) / (second.t - first.t)
            break
    ends = [
        w.pos(model, data) if callable(w.pos) else np.asarray(w.pos, dtype=np.float64) for w in (start, end)
    ]
    pos = ends[0] + (ends[1] - ends[0]) * fraction
    natural = float(np.arctan2(pos[1] - base_xy[1], pos[0] - base_xy[0]))
    yaw_a = natural if start.yaw is None else start.yaw
    yaw_b = natural if end.yaw is None else end.yaw
    yaw = yaw_a + _wrap(yaw_b - yaw_a) * fraction
    pitch = start.pitch + (end.pitch - start.pitch) * fraction
    roll = start.roll + (end.roll - start.roll) * fraction
    gripper = start.gripper + (end.gripper - start.gripper) * fraction
    return pos, _rot_z(yaw) @ _rot_y(pitch) @ _rot_x(roll), gripper


class AlohaScriptedExpert:
    """Privileged-state expert for one ALOHA task; ``act`` returns the next 14-D joint target.

    The plan is made on the first ``act`` of an episode, from the objects' poses then; the servoing part of
    insertion reads them again every step. One ``act`` per env step (50 Hz).

    Args:
        task: ``"transfer_cube"`` or ``"insertion"``.
    """

    def __init__(self, task: str) -> None:
        if task not in PLANS:
            raise ValueError(f"no scripted ALOHA expert for task {task!r}; known: {sorted(PLANS)}")
        self.task = task
        self.reset()

    def reset(self) -> None:
        """Forget the plan; the next ``act`` plans a new episode."""
        self._step = 0
        self._plan: dict[str, list[Waypoint]] | None = None
        self._ik: dict[str, ViperXIK] = {}
        self._previous: dict[str, np.ndarray] = {}

    def act(self, model: Any, data: Any) -> np.ndarray:
        """The joint targets ``(14,)`` for the current step of the episode."""
        if self._plan is None:
            self._plan = PLANS[self.task](model, data)
            for side in ("left", "right"):
                self._ik[side] = ViperXIK(model, side)
                addresses = [model.jnt_qposadr[model.joint(f"vx300s_{side}/{j}").id] for j in ARM_JOINTS]
                self._previous[side] = data.qpos[addresses].copy()
        action = []
        for side in ("left", "right"):
            ik = self._ik[side]
            pos, rot, gripper = _interpolate(self._plan[side], self._step, model, data, ik.base_pos[:2])
            self._previous[side] = ik.solve(pos, rot, self._previous[side])
            action.extend([*self._previous[side], gripper])
        self._step += 1
        return np.asarray(action, dtype=np.float64)


def demo_layout(cameras: tuple[str, ...] = ("top", "angle")) -> DemoLayout:
    """HDF5 layout of ALOHA demos: ``obs/<camera>_rgb`` -> ``<camera>_image``; proprio ``obs/qpos`` (14)."""
    return DemoLayout(cameras={f"{camera}_rgb": f"{camera}_image" for camera in cameras}, proprio=("qpos",))


ALOHA_LAYOUT = demo_layout()


def collect_episode(
    env: Any, expert: AlohaScriptedExpert, seed: int, init_state_id: int | None = None, render: bool = True
) -> dict[str, Any]:
    """Run ``expert`` for one ALOHA episode, physics only; then render its frames by replaying the states.

    Args:
        env: A ``vlamergebench/Aloha*-v0`` env (``TimeLimit`` ends a failed episode).
        expert: The expert of the env's task; reset here.
        seed: Episode seed (picks the training layout when ``init_state_id`` is None).
        init_state_id: An evaluation layout id, or None.
        render: Replay the recorded states through the cameras (only worth it for a success).

    Returns:
        ``{"actions": (T, 14), "states": (T, S) simulator state before step t, "rewards": (T,) uint8,
        "dones": (T,) uint8, "obs": {"qpos": (T, 14), "<camera>_rgb": (T, H, W, 3) uint8 upright},
        "success": bool, "instruction": str, "init_state_id": int | None, "layout_seed": int}``; the
        cameras are present only when ``render`` is set.
    """
    unwrapped = env.unwrapped
    options = None if init_state_id is None else {"init_state_id": init_state_id}
    unwrapped.set_camera_rendering(False)
    try:
        observation, info = env.reset(seed=seed, options=options)
        expert.reset()
        record: dict[str, list] = {key: [] for key in ("actions", "states", "rewards", "dones", "qpos")}
        done = False
        while not done:
            record["states"].append(unwrapped.get_sim_state())
            record["qpos"].append(observation["state"])
            action = expert.act(*unwrapped.sim)
            observation, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
            record["actions"].append(action)
            record["rewards"].append(reward)
            record["dones"].append(done)
    finally:
        unwrapped.set_camera_rendering(True)
    obs = {"qpos": np.asarray(record["qpos"], dtype=np.float64)}
    if render:
        obs.update(render_states(env, record["states"]))
    return {
        "actions": np.asarray(record["actions"], dtype=np.float64),
        "states": np.asarray(record["states"], dtype=np.float64),
        "rewards": np.asarray(record["rewards"], dtype=np.uint8),
        "dones": np.asarray(record["dones"], dtype=np.uint8),
        "obs": obs,
        "success": bool(info["is_success"]),
        "instruction": str(info["instruction"]),
        "init_state_id": info["init_state_id"],
        "layout_seed": info["layout_seed"],
    }


def render_states(env: Any, states: np.ndarray) -> dict[str, np.ndarray]:
    """Frames of recorded states, ``{"<camera>_rgb": (T, H, W, 3) uint8}``; the env is left at the last."""
    frames = [env.unwrapped.observe_state(state) for state in states]
    keys = [key for key in frames[0] if key.endswith("_image")]
    return {key.removesuffix("_image") + "_rgb": np.stack([frame[key] for frame in frames]) for key in keys}


def record_demos(
    env: Any, path: str | Path, num_demos: int, first_seed: int = 0, max_failures: int = 10
) -> Path:
    """Write ``num_demos`` successful scripted episodes of the env's task to a LIBERO-layout HDF5 file.

    Episode k runs with seed ``first_seed + k`` on a training layout (never one of the 50 evaluation
    layouts); failed episodes are skipped and counted, and more than ``max_failures`` raise, naming the seeds.

    Args:
        env: A ``vlamergebench/Aloha*-v0`` env made with the cameras and image size to record.
        path: Output ``.hdf5`` (written as ``.partial`` until complete).
        num_demos: Successful demos to write.
        first_seed: Seed of the first episode.
        max_failures: Failed episodes tolerated.

    Returns:
        The written file's path.
    """
    from tqdm import tqdm

    unwrapped = env.unwrapped
    expert, failed = AlohaScriptedExpert(unwrapped.task_name), []
    problem_info = {
        "problem_name": unwrapped.task_name,
        "domain_name": "aloha",
        "language_instruction": unwrapped.instruction,
    }
    env_args = {
        "env_id": env.spec.id if env.spec else None,
        "task": unwrapped.task_name,
        "image_size": unwrapped.image_size,
        "cameras": list(unwrapped.cameras),
    }
    layout = demo_layout(unwrapped.cameras)
    with (
        DemoWriter(path, env_name=f"aloha/{unwrapped.task_name}", problem_info=problem_info,
                   env_args=env_args, layout=layout) as writer,
        tqdm(total=num_demos, desc=f"ALOHA demos {unwrapped.task_name}", unit="demo") as progress,
    ):  # fmt: skip
        seed = first_seed
        while writer.num_demos < num_demos:
            demo = collect_episode(env, expert, seed=seed, render=False)  # physics only: fast
            if demo["success"]:
                obs = {**demo["obs"], **render_states(env, demo["states"])}
                attrs = {"seed": seed, "layout_seed": demo["layout_seed"]}
                writer.add_demo(demo["actions"], demo["states"], obs, rewards=demo["rewards"],
                                dones=demo["dones"], attrs=attrs)  # fmt: skip
                progress.update(1)
            else:
                failed.append(seed)
                if len(failed) > max_failures:
                    raise RuntimeError(
                        f"ALOHA {unwrapped.task_name}: scripted episodes failed for seeds {failed}"
                    )
            seed += 1
    return Path(path)
