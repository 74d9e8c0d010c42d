"""Bimanual ALOHA tasks (gym-aloha's cube transfer and peg insertion) under vlamergebench's env contract.

The scene, the two ViperX 300 arms, the task logic (``before_step`` gripper mapping, 0..4 contact rewards)
and the object layouts are gym-aloha's own (``gym_aloha.tasks.sim``, ``gym_aloha.utils``), on dm_control's
MuJoCo physics. What differs from ``gym_aloha.env.AlohaEnv``, each on purpose:

* Rendering. gym-aloha renders three 480x640 cameras every step (~290 ms here) and returns one. We render only
  the cameras the policy reads, at the size it reads them, by default without shadows and multisampling
  (~2x and ~3x in software GL), and not at all while ``set_camera_rendering(False)`` (physics-only rollouts,
  chunked execution). The physics step itself costs ~0.2 ms. Measured speeds: docs/bimanual.md.
* Layouts. gym-aloha keeps the object pose in a module-level global and draws it from ``RandomState(seed)``.
  We place objects per episode from ``options["init_state_id"]`` (layout ``k`` = gym-aloha's ``reset(seed=k)``
  layout, ``k < 50``: the evaluation layouts) or, without it, from a layout seed drawn from ``self.np_random``
  outside that range (training layouts never repeat an evaluation layout).
* Success ends the episode with reward 1 (docs/formats.md section 1); gym-aloha's 0..4 reward is
  ``info["stage"]``. Truncation is ``TimeLimit``'s (registered ``max_episode_steps``).

The 14-D joint interface ``[left 6 joints, left gripper, right 6 joints, right gripper]`` with grippers
normalised 0 (closed) .. 1 (open) is RoboTwin's aloha-agilex ``qpos`` layout (vlamergebench/envs/robotwin.py),
so bimanual policies and merges use one action layout across both simulators.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlamergebench.envs.contract import (
    check_image_size,
    check_init_state_id,
    check_instruction,
    check_render_mode,
    instruction_space,
    reset_options,
)

ACTION_DIM = 14
PROPRIO_DIM = 14
ARM_JOINTS = ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate")
DEFAULT_CAMERAS = ("top", "angle")
NUM_INIT_STATES = 50  # fixed evaluation layouts, like LIBERO's 50 init states per task
CONTROL_SUBSTEPS = 10  # gym-aloha's control period DT = 0.02 s over the MJCF timestep of 0.002 s (50 Hz)
_MAX_LAYOUT_SEED = 2**31 - 1


@dataclass(frozen=True)
class AlohaTask:
    """One gym-aloha bimanual task.

    Attributes:
        name: Our task name (also gym-aloha's ``task`` argument).
        xml: The joint-controlled MJCF in ``gym_aloha/assets``.
        task_class: The dm_control task in ``gym_aloha.tasks.sim`` (gripper mapping and 0..4 reward).
        object_joints: Free joints placed at reset, in the order of gym-aloha's pose sampler.
        instruction: The language instruction (ours; gym-aloha has none).
    """

    name: str
    xml: str
    task_class: str
    object_joints: tuple[str, ...]
    instruction: str


TASKS = (
    AlohaTask(
        "transfer_cube",
        "bimanual_viperx_transfer_cube.xml",
        "TransferCubeTask",
        ("red_box_joint",),
        "pick up the red cube with the right arm and hand it over to the left arm",
    ),
    AlohaTask(
        "insertion",
        "bimanual_viperx_insertion.xml",
        "InsertionTask",
        ("red_peg_joint", "blue_socket_joint"),
        "pick up the red peg and the blue socket and insert the peg into the socket",
    ),
)
_TASKS_BY_NAME = {task.name: task for task in TASKS}


def _resolve_task(task: int | str) -> tuple[int, AlohaTask]:
    if isinstance(task, (int, np.integer)) and not isinstance(task, bool) and 0 <= int(task) < len(TASKS):
        return int(task), TASKS[int(task)]
    if isinstance(task, str) and task in _TASKS_BY_NAME:
        return [t.name for t in TASKS].index(task), _TASKS_BY_NAME[task]
    listing = ", ".join(f"{i}: {t.name}" for i, t in enumerate(TASKS))
    raise ValueError(f"unknown ALOHA task {task!r}; pass an int id or a name ({listing})")


def sample_layout(task: str, layout_seed: int) -> np.ndarray:
    """Object poses (n_objects * 7: xyz + quat wxyz) of gym-aloha's layout for ``layout_seed``."""
    from gym_aloha.utils import sample_box_pose, sample_insertion_pose

    if task == "transfer_cube":
        return np.asarray(sample_box_pose(layout_seed), dtype=np.float64)
    return np.concatenate(sample_insertion_pose(layout_seed)).astype(np.float64)


class AlohaEnv(gym.Env):
    """A bimanual ALOHA task of gym-aloha (two ViperX 300 6-DoF arms on a table), joint-position controlled.

    ## Description
    ``transfer_cube``: the right arm picks up a red cube and hands it to the left arm. ``insertion``: the
    right arm picks up a red peg, the left arm a blue socket, and the peg goes into the socket until it
    touches the pin inside. Success is gym-aloha's top reward (4): the left fingers touch the cube while it
    is off the table, or the peg touches the pin.

    ## Action Space
    ``Box((14,), float32)``: absolute joint targets ``[left waist, shoulder, elbow, forearm_roll, wrist_angle,
    wrist_rotate, left gripper, right ...]``, arm joints in radians within the actuators' ``ctrlrange``,
    grippers normalised 0 (closed) .. 1 (open). Position servos track the targets (50 Hz control, 10 physics
    sub-steps); a target outside the bounds is clamped by the actuator's ``ctrlrange``, as gym-aloha does. A
    wrong shape or a non-finite value raises ``ValueError``.

    ## Observation Space
    ``Dict``: ``<camera>_image`` ``uint8 (S, S, 3)`` upright for each camera in ``cameras`` (default
    ``top_image`` and ``angle_image``); ``state`` ``float32 (14,)``: the arm joint positions (rad) and the
    normalised finger positions, in the action's order; ``instruction`` the contract's ``Text`` space.

    ## Rewards
    1.0 on the step that reaches success, else 0.0 (gym-aloha's 0..4 stage reward is ``info["stage"]``).

    ## Starting State
    Both arms at gym-aloha's start pose; objects at layout ``options["init_state_id"]`` (0..49, gym-aloha's
    ``reset(seed=k)`` layout) or, without it, at a training layout drawn from ``self.np_random``. The objects
    start 3 cm above the table and drop onto it in the first steps, as in gym-aloha.

    ## Episode End
    Terminated on success. Truncation is left to ``TimeLimit`` (registered ``max_episode_steps`` = 400, 8 s:
    ACT's episode length for these tasks; the scripted experts finish in about 280).

    ## Arguments
    ``task`` (int id or name, set by the registered id), ``image_size`` (square side, default 224),
    ``cameras`` (MJCF camera names, default ``("top", "angle")``), ``shadows`` (False), ``antialiasing``
    (False: no multisampling), ``camera_rendering`` (True), ``render_mode`` (None or ``"rgb_array"``: the
    first camera's last frame).

    Privileged access (scripted experts, demo collection): ``env.unwrapped.sim`` is ``(mujoco.MjModel,
    mujoco.MjData)``; ``env.unwrapped.physics`` the dm_control ``Physics``.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 50}

    def __init__(
        self,
        task: int | str = "transfer_cube",
        image_size: int = 224,
        cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS,
        shadows: bool = False,
        antialiasing: bool = False,
        camera_rendering: bool = True,
        render_mode: str | None = None,
    ) -> None:
        image_size = check_image_size(image_size)
        self.render_mode = check_render_mode(render_mode)
        self.task_id, self._spec = _resolve_task(task)
        self.task_name = self._spec.name
        self.instruction = check_instruction(self._spec.instruction, f"ALOHA {self.task_name}")
        self.image_size = image_size
        self._camera_rendering = bool(camera_rendering)
        self._physics, self._task = self._build_simulator(shadows, antialiasing)
        known = [self._physics.model.id2name(i, "camera") for i in range(self._physics.model.ncam)]
        self.cameras = tuple(cameras)
        if not self.cameras or len(set(self.cameras)) != len(self.cameras) or set(self.cameras) - set(known):
            raise ValueError(f"cameras must be distinct names among {known}, got {list(cameras)!r}")
        self._keys = {f"{camera}_image": camera for camera in self.cameras}  # our key -> MJCF camera
        self._frames = {key: np.zeros((image_size, image_size, 3), np.uint8) for key in self._keys}
        self._init_state_id: int | None = None
        self._layout_seed: int | None = None
        self._started = False

        image = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {
                **dict.fromkeys(self._keys, image),
                "state": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
                "instruction": instruction_space(),
            }
        )
        ctrl = self._physics.model.actuator_ctrlrange
        arm = [
            self._physics.model.name2id(f"vx300s_{side}/{j}", "joint")
            for side in ("left", "right")
            for j in ARM_JOINTS
        ]
        actuated = list(self._physics.model.actuator_trnid[:, 0])
        arm_range = ctrl[[actuated.index(j) for j in arm]]  # (12, 2)
        low = np.concatenate([arm_range[:6, 0], [0.0], arm_range[6:, 0], [0.0]])
        high = np.concatenate([arm_range[:6, 1], [1.0], arm_range[6:, 1], [1.0]])
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)

    # --- catalogue hook (docs/formats.md section 1) ---------------------------------------------------------
    @classmethod
    def list_tasks(cls, task: int | str | None = None, **_spec_kwargs: Any) -> list[dict[str, Any]]:
        """The task(s) behind one registered id (all ALOHA tasks if ``task`` is None), building nothing."""
        chosen = list(enumerate(TASKS)) if task is None else [_resolve_task(task)]
        return [{"task_id": i, "name": t.name, "instruction": t.instruction} for i, t in chosen]

    # --- simulator ----------------------------------------------------------------------------------------
    def _build_simulator(self, shadows: bool, antialiasing: bool) -> tuple[Any, Any]:
        """gym-aloha's joint-controlled physics and task object (the one place the simulator is built)."""
        try:
            from dm_control import mujoco as dm_mujoco
            from gym_aloha import constants
            from gym_aloha.tasks import sim
        except ImportError as error:
            raise gym.error.DependencyNotInstalled(
                f"ALOHA envs need gym-aloha and dm-control ({error}): pip install -e '.[aloha]' and "
                "pip install --no-deps gym-aloha==0.1.5"
            ) from error

        physics = dm_mujoco.Physics.from_xml_path(str(constants.ASSETS_DIR / self._spec.xml))
        # Software GL: the 4096 px shadow map and 4x multisampling of gym-aloha's MJCF cost ~2x and ~3x.
        if not shadows:
            physics.model.light_castshadow[:] = False
        if not antialiasing:
            physics.model.vis.quality.offsamples = 0
        # The offscreen buffer (640x480 in gym-aloha's MJCF) must hold the largest image we render.
        physics.model.vis.global_.offwidth = max(physics.model.vis.global_.offwidth, self.image_size)
        physics.model.vis.global_.offheight = max(physics.model.vis.global_.offheight, self.image_size)
        return physics, getattr(sim, self._spec.task_class)()

    @property
    def physics(self) -> Any:
        """gym-aloha's dm_control ``Physics`` (privileged access)."""
        return self._physics

    @property
    def sim(self) -> tuple[Any, Any]:
        """``(mujoco.MjModel, mujoco.MjData)`` of the simulation (privileged access for scripted experts)."""
        return self._physics.model.ptr, self._physics.data.ptr

    def get_sim_state(self) -> np.ndarray:
        """The MuJoCo integration state (``mj_getState``, ``mjSTATE_INTEGRATION``): restores every step."""
        import mujoco

        return self._physics.get_state(mujoco.mjtState.mjSTATE_INTEGRATION).copy()

    def observe_state(self, state: np.ndarray) -> dict[str, Any]:
        """Set the simulation to ``state`` (from :meth:`get_sim_state`) and return its observation."""
        import mujoco

        state = np.asarray(state, dtype=np.float64)
        expected = self.get_sim_state().shape
        if state.shape != expected:
            raise ValueError(f"state has shape {state.shape}, expected {expected} for ALOHA {self.task_name}")
        self._physics.set_state(state, mujoco.mjtState.mjSTATE_INTEGRATION)
        self._physics.forward()
        return self._observation()

    def set_camera_rendering(self, enabled: bool) -> None:
        """Render cameras for returned observations (True) or repeat the last frames (False, physics only)."""
        self._camera_rendering = bool(enabled)

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Render the selected cameras of the current state now (upright ``uint8``), whatever the switch."""
        from vlamergebench.envs.rendering import require_gl_backend

        require_gl_backend()
        for key, camera in self._keys.items():
            self._frames[key] = self._physics.render(self.image_size, self.image_size, camera_id=camera)
        return {key: frame.copy() for key, frame in self._frames.items()}

    def _observation(self) -> dict[str, Any]:
        if self._camera_rendering:
            self.render_cameras()
        state = self._task.get_qpos(self._physics).astype(np.float32)  # (14,) joints + normalised fingers
        return {
            **{key: frame.copy() for key, frame in self._frames.items()},
            "state": state,
            "instruction": self.instruction,
        }

    def _info(self, stage: int) -> dict[str, Any]:
        return {
            "is_success": stage == self._task.max_reward,
            "stage": stage,
            "task": self.task_name,
            "task_id": self.task_id,
            "suite": "aloha",
            "instruction": self.instruction,
            "init_state_id": self._init_state_id,
            "layout_seed": self._layout_seed,
        }

    # --- Gymnasium API ------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode at the layout of ``options["init_state_id"]`` (see Starting State)."""
        super().reset(seed=seed)
        init_state_id = reset_options(options).get("init_state_id")
        if init_state_id is None:
            self._init_state_id = None
            layout_seed = int(self.np_random.integers(NUM_INIT_STATES, _MAX_LAYOUT_SEED))
        else:
            where = f"ALOHA {self.task_name}"
            self._init_state_id = check_init_state_id(init_state_id, NUM_INIT_STATES, where)
            layout_seed = self._init_state_id
        self._layout_seed = layout_seed
        self._place(sample_layout(self.task_name, layout_seed))
        self._started = True
        return self._observation(), self._info(int(self._task.get_reward(self._physics)))

    def _place(self, poses: np.ndarray) -> None:
        """Arms at gym-aloha's start pose, servo targets there too, objects at ``poses`` (7 per object)."""
        from gym_aloha.constants import START_ARM_POSE

        physics = self._physics
        with physics.reset_context():  # mj_resetData, then mj_forward on exit
            physics.data.qpos[: len(START_ARM_POSE)] = START_ARM_POSE
            physics.data.ctrl[:] = START_ARM_POSE
            for index, joint in enumerate(self._spec.object_joints):
                physics.named.data.qpos[joint] = poses[7 * index : 7 * index + 7]

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Apply one 14-D joint target for 0.02 s; truncation is left to ``TimeLimit``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action has shape {action.shape}, expected ({ACTION_DIM},) in ALOHA envs")
        if not np.all(np.isfinite(action)):
            bad = np.flatnonzero(~np.isfinite(action)).tolist()
            raise ValueError(f"action has non-finite entries at indices {bad}: {action.tolist()}")
        if not self._started:
            raise RuntimeError("step() called before reset()")
        # dm_control's control.Environment.step without its observation (which renders three cameras).
        self._task.before_step(action, self._physics)
        self._physics.step(CONTROL_SUBSTEPS)
        self._task.after_step(self._physics)
        stage = int(self._task.get_reward(self._physics))
        success = stage == self._task.max_reward
        return self._observation(), float(success), success, False, self._info(stage)

    def render(self) -> np.ndarray | None:
        """The first camera's last frame, upright (``render_mode="rgb_array"``)."""
        return None if self.render_mode is None else next(iter(self._frames.values())).copy()

    def close(self) -> None:
        """Free the physics and its render contexts; a second call does nothing."""
        if self._physics is not None:
            self._physics.free()
            self._physics = None
