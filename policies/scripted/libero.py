"""Scripted privileged-state experts for LIBERO tasks (demonstrations for training experts).

An expert reads the goal from the task's BDDL (``parsed_problem["goal_state"]``) and object poses and shapes
from the MuJoCo simulator of the LIBERO ``ControlEnv`` it is handed (``env.unwrapped.sim_env``); it never
imports ``vlamergebench.envs`` (the README's arrows). Each goal predicate maps to a plan: a list of phases
(move the end effector to a target, or hold still while the gripper acts), driven by a P+I controller on
LIBERO's OSC_POSE delta actions (7-D in [-1, 1]: position x 0.05 m, world-frame rotation x 0.5 rad, gripper
-1 open / +1 close).

Targets are measured from the simulator when a phase starts (or every step, where marked), so the same plan
serves every init state. Grasps are top-down with the fingers (they close along the grip site's x axis)
across the object's narrowest horizontal width, turned so the gripper misses the other objects; bowls (wider
than the 7.5 cm finger gap) are held by the rim; drawers are pulled with a sideways grasp of the handle (the
cabinet top overhangs it); stove knobs are gripped and turned with the wrist.

Coverage and measured success per task: ``docs/libero.md``; tasks without a plan raise
``UnsupportedTaskError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

POSITION_GAIN = 20.0  # action per metre of error; 5 cm away -> full speed (0.05 m target offset a step)
# Integral action per metre-step of error within INTEGRAL_ZONE_M: the OSC arm settles ~1 cm short of far
# targets (stretched poses), which the proportional term alone never closes.
INTEGRAL_GAIN = 3.0
INTEGRAL_ZONE_M = 0.03
ROTATION_GAIN = 2.0  # action per radian of error (x 0.5 rad a step at 1.0)
PHASE_TIMEOUT_STEPS = 120  # a stuck phase ends instead of stalling the episode (TimeLimit ends it anyway)
OPEN, CLOSE = -1.0, 1.0
FINGER_GAP_M = 0.075  # inner distance between the open pads (measured in the simulator)
PAD_BELOW_EEF_M = 0.013  # fingertip bottoms sit this far below the grip site


class UnsupportedTaskError(ValueError):
    """No scripted plan exists for this task's goal; the message names the goal."""


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _axis_angle(rotation: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    angle = np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array(
        [rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]]
    )
    if np.sin(angle) < 1e-6:  # 180 degrees: take the axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(rotation) + 1) / 2, 0, None))
        return axis / np.linalg.norm(axis) * angle
    return axis / (2 * np.sin(angle)) * angle


class Scene:
    """Read-only views of the simulator a plan needs: poses, object shapes, sites, the end effector."""

    def __init__(self, sim_env: Any) -> None:
        self.env = sim_env.env
        self.sim = sim_env.sim
        self.model = self.sim.model._model
        self.data = self.sim.data._data
        self.robot = self.env.robots[0]

    def eef(self) -> np.ndarray:
        """Grip-site position (between the finger pads)."""
        return np.array(self.sim.data.site_xpos[self.robot.eef_site_id])

    def eef_rotation(self) -> np.ndarray:
        """Grip-site orientation (3x3, site to world; x: finger closing, z: approach)."""
        return np.array(self.data.site_xmat[self.robot.eef_site_id]).reshape(3, 3)

    def body_id(self, name: str) -> int:
        """MuJoCo body id of a LIBERO object or fixture."""
        return self.env.obj_body_id[name]

    def position(self, name: str) -> np.ndarray:
        """Object origin (m, world)."""
        return np.array(self.data.xpos[self.body_id(name)])

    def rotation(self, name: str) -> np.ndarray:
        """Object orientation (3x3, body to world)."""
        return np.array(self.data.xmat[self.body_id(name)]).reshape(3, 3)

    def site(self, name: str) -> np.ndarray:
        """Position of a MuJoCo site (BDDL regions are sites)."""
        return np.array(self.sim.data.get_site_xpos(name))

    def geom_points(self, name: str) -> np.ndarray:
        """Corners (n, 3) of the object's collision geoms' bounding boxes, in the world frame."""
        root = self.body_id(name)
        bodies = {b for b in range(self.model.nbody) if self._descends(b, root)}
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        points = []
        for geom in range(self.model.ngeom):
            if self.model.geom_bodyid[geom] not in bodies:
                continue
            if not (self.model.geom_contype[geom] or self.model.geom_conaffinity[geom]):
                continue
            center, half = self.model.geom_aabb[geom, :3], self.model.geom_aabb[geom, 3:]
            rotation = self.data.geom_xmat[geom].reshape(3, 3)
            points.append(self.data.geom_xpos[geom] + (center + corners * half) @ rotation.T)
        return np.concatenate(points)

    def body_geom_points(self, body: int) -> np.ndarray:
        """Corners (n, 8, 3) of the collision geoms attached to one body (not its children), world frame."""
        corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        boxes = []
        for geom in np.flatnonzero(self.model.geom_bodyid == body):
            if not (self.model.geom_contype[geom] or self.model.geom_conaffinity[geom]):
                continue
            center, half = self.model.geom_aabb[geom, :3], self.model.geom_aabb[geom, 3:]
            rotation = self.data.geom_xmat[geom].reshape(3, 3)
            boxes.append(self.data.geom_xpos[geom] + (center + corners * half) @ rotation.T)
        return np.array(boxes)

    def joint(self, name: str) -> tuple[float, np.ndarray, int]:
        """(position, world axis, body id) of a named MuJoCo joint."""
        import mujoco

        joint = mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if joint < 0:
            raise UnsupportedTaskError(f"the scene has no joint {name!r}")
        return (
            float(self.data.qpos[self.model.jnt_qposadr[joint]]),
            np.array(self.data.xaxis[joint]),
            int(self.model.jnt_bodyid[joint]),
        )

    def _descends(self, body: int, root: int) -> bool:
        while body not in (0, root):
            body = self.model.body_parentid[body]
        return body == root

    def bounds(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World axis-aligned bounds (low, high) of the object's collision geoms."""
        points = self.geom_points(name)
        return points.min(0), points.max(0)

    def narrowest_direction(self, name: str) -> tuple[float, float]:
        """(angle of the horizontal direction across which the object is narrowest, that width in m)."""
        xy = self.geom_points(name)[:, :2]
        angles = np.deg2rad(np.arange(0, 180, 3))
        widths = [np.ptp(xy @ np.array([np.cos(a), np.sin(a)])) for a in angles]
        best = int(np.argmin(widths))
        return float(angles[best]), float(widths[best])


# --- plans ------------------------------------------------------------------------------------------------
Memo = dict[str, Any]
Target = Callable[[Scene, Memo], np.ndarray]


@dataclass(frozen=True)
class Step:
    """One phase of a plan.

    Attributes:
        name: what it does (reported as :attr:`LiberoScriptedExpert.phase`).
        target: end-effector target position (m, world) from the scene and the plan's memo; None holds still.
        gripper: gripper command during the phase.
        rotation: end-effector target orientation (3x3, world); None keeps the previous one.
        hold_steps: phases without a target last this many steps.
        tolerance_m: a moving phase ends this close to its target (or when the arm stalls, or on timeout).
        on_start: records measurements into the memo when the phase starts (e.g. the grasp offset).
        max_speed: cap on the position action, fraction of 0.05 m a step.
        track: evaluate ``target`` every step (else once, when the phase starts).
    """

    name: str
    target: Target | None
    gripper: float
    rotation: Callable[[Scene, Memo], np.ndarray] | None = None
    hold_steps: int = 0
    tolerance_m: float = 0.008
    on_start: Callable[[Scene, Memo], None] | None = None
    max_speed: float = 1.0
    track: bool = False


def _frame(closing: np.ndarray, approach: np.ndarray) -> np.ndarray:
    """Grip-site rotation whose x axis (finger closing) and z axis (approach) point as given (world)."""
    z_axis = approach / np.linalg.norm(approach)
    x_axis = closing - z_axis * (closing @ z_axis)
    x_axis /= np.linalg.norm(x_axis)
    return np.column_stack([x_axis, np.cross(z_axis, x_axis), z_axis])


def _nearest_equivalent(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    """``target`` or ``target`` turned half a turn about its approach axis, whichever is nearer ``current``.

    The two fingers are alike, so both grip the same way; the shorter turn keeps the arm off its limits.
    """
    flipped = target @ np.diag([-1.0, -1.0, 1.0])
    errors = [np.linalg.norm(_axis_angle(r @ current.T)) for r in (target, flipped)]
    return target if errors[0] <= errors[1] else flipped


def _top_down(closing_angle: float) -> np.ndarray:
    return _frame(np.array([np.cos(closing_angle), np.sin(closing_angle), 0.0]), np.array([0.0, 0.0, -1.0]))


TOP_DOWN = _top_down(np.pi / 2)  # LIBERO's initial pose: fingers close along world y


def _surface_below(scene: Scene, owner: str, xy: np.ndarray) -> float:
    """Height of the highest collision geom of ``owner`` whose footprint covers ``xy`` (a supporting top)."""
    points = scene.geom_points(owner).reshape(-1, 8, 3)
    tops = [p[:, 2].max() for p in points if np.all(p[:, :2].min(0) <= xy) and np.all(xy <= p[:, :2].max(0))]
    return float(max(tops)) if tops else float(points[..., 2].max())


# The gripper's collision volume in the grasp frame (u: finger closing axis, v: across it, z: up from the
# grip site), measured from the Panda gripper's collision geoms: the hand is wide along u.
HAND_BOX = (np.array([-0.11, -0.035, 0.02]), np.array([0.11, 0.042, 1.0]))
FINGER_BOXES = [
    (np.array([sign_low, -0.015, -0.015]), np.array([sign_high, 0.015, 1.0]))
    for sign_low, sign_high in ((-0.07, -0.03), (0.03, 0.07))
]


def _grasp_collisions(scene: Scene, obj: str, grasp: np.ndarray, closing: float) -> float:
    """Volume-free overlap score of the gripper (above ``grasp``) with every other object; 0 when clear."""
    u = np.array([np.cos(closing), np.sin(closing), 0.0])
    v = np.array([-u[1], u[0], 0.0])
    frame = np.column_stack([u, v, [0.0, 0.0, 1.0]])
    overlap = 0.0
    for other in (*scene.env.objects_dict, *scene.env.fixtures_dict):
        if other == obj:
            continue
        for corners in scene.geom_points(other).reshape(-1, 8, 3):
            local = (corners - grasp) @ frame  # (8, 3) in the grasp frame
            low, high = local.min(0), local.max(0)
            for box_low, box_high in (HAND_BOX, *FINGER_BOXES):
                depth = np.minimum(high, box_high) - np.maximum(low, box_low)
                if np.all(depth > 0):
                    overlap += float(depth.min())
    return overlap


def _choose_grasp(scene: Scene, obj: str) -> tuple[np.ndarray, float]:
    """A top-down grasp (position, finger-closing angle) on ``obj`` whose gripper misses the other objects.

    Objects narrower than the open fingers are grasped across a narrow width, trying small yaw changes and
    shifts along the object before accepting a collision; wider ones (bowls) by the rim, on the freest side.
    """
    points = scene.geom_points(obj)
    low, high = points.min(0), points.max(0)
    angle, width = scene.narrowest_direction(obj)
    candidates = []
    if width < FINGER_GAP_M - 0.01:
        grasp_z = max(high[2] - 0.035, low[2] + PAD_BELOW_EEF_M - 0.004)
        for yaw in np.deg2rad([0, 10, -10, 20, -20, 30, -30, 90]):
            closing = (angle + yaw) % np.pi
            u = np.array([np.cos(closing), np.sin(closing)])
            v = np.array([-u[1], u[0]])
            across, along = points[:, :2] @ u, points[:, :2] @ v
            if np.ptp(across) > FINGER_GAP_M - 0.008:
                continue
            reach = max(np.ptp(along) / 2 - 0.012, 0.0)
            for shift in (0.0, 0.015, -0.015, 0.03, -0.03):
                if abs(shift) > reach:
                    continue
                xy = u * (across.min() + across.max()) / 2 + v * ((along.min() + along.max()) / 2 + shift)
                candidates.append((np.array([xy[0], xy[1], grasp_z]), closing))
    else:  # a bowl: straddle the rim wall where it is vertical (upright bowls: anywhere; tipped: the sides)
        origin, rotation = scene.position(obj), scene.rotation(obj)
        local = (points - origin) @ rotation  # body frame: z is the bowl's axis, the rim at the top
        rim_height = local[:, 2].max()
        radius = np.percentile(np.linalg.norm(local[:, :2], axis=1), 90)
        for theta in np.deg2rad(np.arange(0, 360, 30)):
            outward = rotation @ np.array([np.cos(theta), np.sin(theta), 0.0])
            if abs(outward[2]) > 0.35:  # the wall there is not vertical enough for a top-down pinch
                continue
            in_plane = np.array([np.cos(theta), np.sin(theta)]) * (radius - 0.006)
            rim = origin + rotation @ np.array([in_plane[0], in_plane[1], rim_height])
            grasp = rim - 0.018 * rotation[:, 2]  # pads on the top ~2 cm of the wall
            candidates.append((grasp, float(np.arctan2(outward[1], outward[0])) % np.pi))
    if not candidates:
        raise UnsupportedTaskError(f"no top-down grasp fits {obj!r} (narrowest width {width:.3f} m)")
    # Prefer a clear gripper, then (a tilted bowl) a rim side within 5 mm of the highest, then list order.
    top = max(grasp[2] for grasp, _ in candidates)
    keys = [
        (_grasp_collisions(scene, obj, grasp, closing), grasp[2] < top - 0.005, index)
        for index, (grasp, closing) in enumerate(candidates)
    ]
    return candidates[min(keys)[2]]


def _above_then_down(scene: Scene, memo: Memo) -> np.ndarray:
    eef, grasp = scene.eef(), memo["grasp"]
    if np.linalg.norm(eef[:2] - grasp[:2]) > 0.03:
        return np.array([grasp[0], grasp[1], max(eef[2], memo["approach_z"] - 0.04)])
    return grasp


def _pick(obj: str) -> list[Step]:
    """Grasp ``obj`` top-down (across a narrow width, or a bowl by its rim) and lift it."""

    def measure(scene: Scene, memo: Memo) -> None:
        grasp, closing = _choose_grasp(scene, obj)
        memo["grasp"], memo["grasp_rotation"] = grasp, _top_down(closing)
        memo["approach_z"] = max(grasp[2] + 0.10, scene.bounds(obj)[1][2] + 0.06)

    def hold(scene: Scene, memo: Memo) -> None:
        low, high = scene.bounds(obj)
        eef = scene.eef()
        memo["held"] = obj
        memo["hold_offset"] = eef - scene.position(obj)  # LIBERO's predicates compare object origins
        memo["hang"] = eef[2] - low[2]  # how far the object reaches below the grip site
        memo["support_z"] = low[2]  # the surface it stood on (placing on the same table)

    return [
        Step(
            "approach",
            lambda s, m: np.array([*m["grasp"][:2], m["approach_z"]]),
            OPEN,
            rotation=lambda s, m: m["grasp_rotation"],
            tolerance_m=0.015,
            on_start=measure,
        ),  # fmt: skip
        # Re-measured: objects may still be settling when the episode starts (a bowl sliding off a ramekin);
        # if the grasp moved, line up above it again before going down.
        Step(
            "descend",
            _above_then_down,
            OPEN,
            rotation=lambda s, m: m["grasp_rotation"],
            tolerance_m=0.005,
            on_start=measure,
            max_speed=0.5,
            track=True,
        ),
        Step("close", None, CLOSE, hold_steps=12),
        Step("lift", lambda s, m: s.eef() + np.array([0, 0, 0.12]), CLOSE, tolerance_m=0.02, on_start=hold),
    ]


def _place(
    owner: str | None, xy: Callable[[Scene], np.ndarray], drop_m: float = 0.01, inside: str | None = None
) -> list[Step]:
    """Carry the held object over ``xy`` on ``owner``'s top, lower it to ``drop_m`` above it, release.

    With ``inside`` (a region such as an open drawer's) the supporting surface is that region's floor.
    """

    def measure(scene: Scene, memo: Memo) -> None:
        target_xy = xy(scene)
        # LIBERO's drawer regions sit a little above the drawer's floor.
        if inside is not None:
            surface = scene.site(inside)[2] - 0.02
        elif owner is None:  # a region of the table it stands on
            surface = memo["support_z"]
        else:
            surface = _surface_below(scene, owner, target_xy)
        obstacles = surface if owner is None else max(scene.bounds(owner)[1][2], surface)
        memo["place_xy"] = target_xy
        memo["carry_z"] = max(obstacles + memo["hang"] + 0.05, scene.eef()[2])
        memo["release_z"] = surface + drop_m + memo["hang"]

    def over(scene: Scene, memo: Memo, z: float) -> np.ndarray:
        return np.array([*(memo["place_xy"] + memo["hold_offset"][:2]), z])

    def rise(scene: Scene, memo: Memo) -> np.ndarray:  # straight up first: never drag it across an edge
        return np.array([*scene.eef()[:2], memo["carry_z"]])

    return [
        Step("rise", rise, CLOSE, tolerance_m=0.02, on_start=measure),
        Step("carry", lambda s, m: over(s, m, m["carry_z"]), CLOSE, tolerance_m=0.015),
        Step("lower", lambda s, m: over(s, m, m["release_z"]), CLOSE, tolerance_m=0.008, max_speed=0.5),
        Step("release", None, OPEN, hold_steps=10),
        Step("retreat", lambda s, m: s.eef() + np.array([0, 0, 0.10]), OPEN, tolerance_m=0.02),
    ]


def _owner(scene: Scene, region: str) -> str | None:
    """The object or fixture a BDDL region belongs to (its name prefix), or None (the table)."""
    names = sorted((*scene.env.objects_dict, *scene.env.fixtures_dict), key=len, reverse=True)
    return next((name for name in names if region.startswith(name + "_")), None)


def _drawer(scene: Scene, region: str) -> tuple[str, float]:
    """(joint name, pull length) of the drawer behind a ``<cabinet>_<level>_region`` region."""
    cabinet = _owner(scene, region)
    level = region.removeprefix(f"{cabinet}_").removesuffix("_region")
    joint = f"{cabinet}_{level}_level"
    scene.joint(joint)  # raises if the drawer does not exist
    return joint, 0.16


def _open_drawer(joint: str, pull_m: float) -> list[Step]:
    """Grasp the drawer's handle from the front (fingers closing vertically) and pull it open."""

    def measure(scene: Scene, memo: Memo) -> None:
        _, axis, body = scene.joint(joint)
        pull = -axis  # LIBERO drawers open towards negative joint positions
        boxes = scene.body_geom_points(body)
        handle = boxes[int(np.argmax([(box.mean(0) @ pull) for box in boxes]))]  # the front-most geom
        memo["handle"], memo["pull"] = handle.mean(0), pull
        memo["handle_rotation"] = _frame(np.array([0.0, 0.0, 1.0]), -pull)

    def at(offset: float) -> Target:
        return lambda s, m: m["handle"] + m["pull"] * offset

    rotation = lambda s, m: m["handle_rotation"]  # noqa: E731
    return [
        Step("face handle", at(0.10), OPEN, rotation=rotation, tolerance_m=0.015, on_start=measure),
        Step("reach handle", at(-0.005), OPEN, tolerance_m=0.006, max_speed=0.4),
        Step("grip handle", None, CLOSE, hold_steps=10),
        Step("pull", at(pull_m), CLOSE, tolerance_m=0.01, max_speed=1.0),
        Step("let go", None, OPEN, hold_steps=8),
        Step(
            "back off",
            lambda s, m: s.eef() + m["pull"] * 0.05 + np.array([0, 0, 0.08]),
            OPEN,
            tolerance_m=0.02,
        ),
    ]


def _turn_on(obj: str) -> list[Step]:
    """Grip the knob's lever from above and turn the wrist (LIBERO stoves turn on past 0.5 rad)."""

    def measure(scene: Scene, memo: Memo) -> None:
        import mujoco

        knobs = [j for j in range(scene.model.njnt) if scene.model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE]
        knobs = [j for j in knobs if scene._descends(int(scene.model.jnt_bodyid[j]), scene.body_id(obj))]
        if not knobs:
            raise UnsupportedTaskError(f"{obj!r} has no hinge joint to turn")
        body = int(scene.model.jnt_bodyid[knobs[0]])
        points = scene.body_geom_points(body).reshape(-1, 3)
        axis_point = np.array(scene.data.xanchor[knobs[0]])
        xy = points[:, :2] - axis_point[:2]
        angles = np.deg2rad(np.arange(0, 180, 3))
        closing = angles[int(np.argmin([np.ptp(xy @ [np.cos(a), np.sin(a)]) for a in angles]))]
        memo["knob"] = np.array([axis_point[0], axis_point[1], points[:, 2].max() - 0.015])
        memo["knob_rotation"] = _top_down(float(closing))
        memo["turned_rotation"] = _rotation_z(1.0) @ memo["knob_rotation"]

    return [
        Step(
            "above knob",
            lambda s, m: m["knob"] + np.array([0, 0, 0.08]),
            OPEN,
            rotation=lambda s, m: m["knob_rotation"],
            tolerance_m=0.015,
            on_start=measure,
        ),  # fmt: skip
        Step("onto knob", lambda s, m: m["knob"], OPEN, tolerance_m=0.005, max_speed=0.4),
        Step("grip knob", None, CLOSE, hold_steps=10),
        Step(
            "turn",
            lambda s, m: m["knob"],
            CLOSE,
            rotation=lambda s, m: m["turned_rotation"],
            tolerance_m=0.01,
        ),
        Step("let go", None, OPEN, hold_steps=8),
        Step("up", lambda s, m: s.eef() + np.array([0, 0, 0.08]), OPEN, tolerance_m=0.02),
    ]


def _plan(scene: Scene) -> list[Step]:
    goals = scene.env.parsed_problem["goal_state"]
    steps: list[Step] = []
    for predicate, *args in goals:
        owner = _owner(scene, args[-1]) if predicate in ("in", "on") else None
        if predicate == "in" and args[1].endswith("_contain_region"):  # into a basket-like container
            region = args[1]
            steps += _pick(args[0]) + _place(
                region.removesuffix("_contain_region"), lambda s, r=region: s.site(r)[:2]
            )
        elif predicate == "on" and args[1] in scene.env.objects_dict:  # onto another object (origins align)
            steps += _pick(args[0]) + _place(args[1], lambda s, o=args[1]: s.position(o)[:2])
        elif predicate == "on" and args[1] in scene.env.object_sites_dict and owner is not None:
            steps += _pick(args[0]) + _place(owner, lambda s, r=args[1]: s.site(r)[:2])
        elif predicate == "on" and args[1] in scene.env.object_sites_dict:  # a table region: carry it there
            steps += _pick(args[0]) + _place(None, lambda s, r=args[1]: s.site(r)[:2])
        elif predicate == "open" and "drawer" not in args[0] and args[0].endswith("_region"):
            steps += _open_drawer(*_drawer(scene, args[0]))
        elif predicate == "in" and owner in scene.env.fixtures_dict and args[1].endswith("_region"):
            steps += _open_drawer(*_drawer(scene, args[1]))  # a drawer: open it, then place inside
            steps += _pick(args[0]) + _place(owner, lambda s, r=args[1]: s.site(r)[:2], inside=args[1])
        elif predicate == "turnon":
            steps += _turn_on(args[0])
        else:
            raise UnsupportedTaskError(f"no scripted plan for goal {[predicate, *args]} (task goal {goals})")
    return steps


class LiberoScriptedExpert:
    """Privileged-state expert for one LIBERO task; ``act()`` returns the next 7-D action.

    Args:
        sim_env: LIBERO's ``ControlEnv`` (``env.unwrapped.sim_env``); read, never stepped, by the expert.

    Raises:
        UnsupportedTaskError: the task's goal has no plan.
    """

    def __init__(self, sim_env: Any) -> None:
        self.scene = Scene(sim_env)
        self.steps = _plan(self.scene)
        self.reset()

    def reset(self) -> None:
        """Start a new episode (call after the env's reset)."""
        self._index = -1
        self._memo: Memo = {}
        self._rotation = TOP_DOWN
        self._gripper = OPEN
        self._advance()

    @property
    def phase(self) -> str:
        """Name of the current phase (``"done"`` after the last)."""
        return self.steps[self._index].name if self._index < len(self.steps) else "done"

    @property
    def done(self) -> bool:
        """Whether every phase has run."""
        return self._index >= len(self.steps)

    def _advance(self) -> None:
        self._index += 1
        self._steps_in_phase = 0
        self._trail: list[np.ndarray] = []
        self._integral = np.zeros(3)
        if self.done:
            return
        step = self.steps[self._index]
        if step.on_start is not None:
            step.on_start(self.scene, self._memo)
        if step.rotation is not None:
            self._rotation = _nearest_equivalent(
                step.rotation(self.scene, self._memo), self.scene.eef_rotation()
            )
        self._target = self._measure_target()
        self._hold = self.scene.eef()  # phases without a target hold this position (the OSC alone sags)
        self._gripper = step.gripper

    def _measure_target(self) -> np.ndarray | None:
        step = self.steps[self._index]
        return None if step.target is None else np.asarray(step.target(self.scene, self._memo), float)

    def _finished(self, eef: np.ndarray, rotation_error: np.ndarray) -> bool:
        step = self.steps[self._index]
        if self._target is None:
            return self._steps_in_phase >= step.hold_steps
        if self._steps_in_phase >= PHASE_TIMEOUT_STEPS:
            return True
        arrived = (
            np.linalg.norm(self._target - eef) < step.tolerance_m and np.linalg.norm(rotation_error) < 0.1
        )
        self._trail.append(eef)
        stalled = len(self._trail) > 10 and np.linalg.norm(self._trail[-1] - self._trail[-11]) < 0.002
        return arrived or stalled

    def act(self) -> np.ndarray:
        """The next action (float64 (7,)); after the last phase it holds still with the gripper as it was."""
        eef = self.scene.eef()
        rotation_error = _axis_angle(self._rotation @ self.scene.eef_rotation().T)
        while not self.done and self._finished(eef, rotation_error):
            self._advance()
            rotation_error = _axis_angle(self._rotation @ self.scene.eef_rotation().T)
        action = np.zeros(7)
        action[6] = self._gripper
        if self.done:
            return action
        self._steps_in_phase += 1
        step = self.steps[self._index]
        if step.track:
            self._target = self._measure_target()
        error = (self._hold if self._target is None else self._target) - eef
        if np.linalg.norm(error) < INTEGRAL_ZONE_M:
            self._integral += error
        command = POSITION_GAIN * error + INTEGRAL_GAIN * self._integral
        action[:3] = np.clip(command, -step.max_speed, step.max_speed)
        action[3:6] = np.clip(ROTATION_GAIN * rotation_error, -1.0, 1.0)
        return action
