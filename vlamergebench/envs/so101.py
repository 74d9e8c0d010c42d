"""The SO-101 arm as a Gymnasium env over any object with LeRobot's robot surface, with the safety layer.

The robot is LeRobot's ``SO101Follower`` (the real arm, built lazily; lerobot is an optional extra, see
``docs/so101.md``), the MuJoCo twin (:mod:`vlamergebench.envs.so101_twin`), or any object with the same calls:
``connect``, ``disconnect``, ``is_connected``, ``get_observation``, ``send_action``, ``observation_features``
and ``action_features``, with LeRobot's keys (``"<joint>.pos"``) and units (degrees; gripper 0..100).

Safety lives inside the env, not in an ``ActionWrapper`` as STYLE.md L5 suggests: a wrapper can be stepped
around (``env.unwrapped.step``), and ``reset``'s move home and the emergency stop must be clipped too. Every
command the env sends goes through one method, ``_send``, which takes only the output of :func:`clip_action`,
so no path through the adapter sends an unclipped command. Raw robot access is deliberately not public.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import IO, Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlamergebench.configs import from_mapping
from vlamergebench.envs.contract import (
    check_image_size,
    check_init_state_id,
    check_instruction,
    check_render_mode,
    instruction_space,
    reset_options,
)
from vlamergebench.envs.so101_twin import JOINT_NAMES, TASKS, SO101Twin, find_task

logger = logging.getLogger(__name__)
ACTION_KEYS = tuple(f"{joint}.pos" for joint in JOINT_NAMES)


class UnsafeActionError(ValueError):
    """An action the safety layer refuses to interpret (non-finite values); the arm has been e-stopped."""


@dataclass(frozen=True)
class SafetyLimits:
    """Safety limits of the SO-101 adapter, in LeRobot units (5 joints in degrees, then gripper 0..100).

    Every tuple is in ``JOINT_NAMES`` order. Defaults are the twin's joint ranges (the SO-101's mechanical
    range after LeRobot's mid-range calibration) less 2 degrees of margin; tighten them for a real workspace.

    Attributes:
        joint_min: Lowest target per joint.
        joint_max: Highest target per joint.
        max_step: Largest |target - present position| per step, like LeRobot's ``max_relative_target``.
            8 degrees a step at 30 Hz caps what a bad policy output can ask at 240 deg/s; the gripper may
            move 20 units (of 100) a step so that it closes within a few steps.
        home_step: ``max_step`` during ``reset``'s move home; slow (60 deg/s at 30 Hz) because the arm may
            start anywhere and no policy is watching.
        rate_limit_hz: Highest command rate; a step waits out the rest of its period on a real-time robot.
        estop_hold_s: After an emergency stop's hold command, time given to the arm to stop before its torque
            is switched off (it then falls under gravity, as a powered-down SO-101 does).
    """

    joint_min: tuple[float, ...] = (-108.0, -98.0, -94.0, -93.0, -155.0, 0.0)
    joint_max: tuple[float, ...] = (108.0, 98.0, 94.0, 93.0, 160.0, 100.0)
    max_step: tuple[float, ...] = (8.0, 8.0, 8.0, 8.0, 8.0, 20.0)
    home_step: tuple[float, ...] = (2.0, 2.0, 2.0, 2.0, 2.0, 5.0)
    rate_limit_hz: float = 30.0
    estop_hold_s: float = 0.5

    def __post_init__(self) -> None:
        for name in ("joint_min", "joint_max", "max_step", "home_step"):
            value = getattr(self, name)
            if len(value) != len(JOINT_NAMES) or not np.all(np.isfinite(value)):
                raise ValueError(f"SafetyLimits.{name} needs {len(JOINT_NAMES)} finite values, found {value}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if np.any(np.array(self.joint_min) >= np.array(self.joint_max)):
            raise ValueError(
                f"SafetyLimits: joint_min {self.joint_min} must be below joint_max {self.joint_max}"
            )
        if min(self.max_step + self.home_step) <= 0 or self.rate_limit_hz <= 0 or self.estop_hold_s < 0:
            raise ValueError(f"SafetyLimits: steps and rate must be positive, estop_hold_s >= 0: {self}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "SafetyLimits") -> SafetyLimits:
        """Build from a dict (e.g. JSON); unknown keys raise, listing the known ones."""
        return from_mapping(cls, values, where)

    def to_dict(self) -> dict[str, Any]:
        """All fields, defaults written out."""
        return asdict(self)


def clip_action(requested: np.ndarray, present: np.ndarray, joint_min, joint_max, max_step) -> np.ndarray:
    """The target the adapter may send for ``requested`` when the arm is at ``present`` (all LeRobot units).

    The target is clipped into [joint_min, joint_max], then to within ``max_step`` of ``present``. So every
    target moves at most ``max_step`` from where the arm is, and never further outside the limits than the arm
    already is. Non-finite input raises :class:`UnsafeActionError` naming the joints.
    """
    requested = np.asarray(requested, dtype=np.float64)
    present = np.asarray(present, dtype=np.float64)
    for name, values in (("requested action", requested), ("present position", present)):
        if values.shape != (len(JOINT_NAMES),):
            raise UnsafeActionError(f"{name} must have shape ({len(JOINT_NAMES)},), found {values.shape}")
        bad = [joint for joint, value in zip(JOINT_NAMES, values, strict=True) if not np.isfinite(value)]
        if bad:
            raise UnsafeActionError(f"{name} is not finite for {bad}: {values.tolist()}")
    target = np.clip(requested, joint_min, joint_max)
    return np.clip(target, present - np.asarray(max_step), present + np.asarray(max_step))


# --- success detectors: check(robot) -> True (success), False (failure), None (undecided) ----------------
class TwinSuccess:
    """The twin's scripted success check (``robot.is_success()``)."""

    def reset(self) -> None:
        """Nothing to forget between episodes."""

    def check(self, robot: Any) -> bool | None:
        """True once the task holds; never declares failure (truncation does)."""
        return True if robot.is_success() else None


class OperatorSuccess:
    """The operator types ``s`` + Enter (success) or ``f`` + Enter (failure) while the episode runs.

    Args:
        stream: Where the operator types; standard input by default. Read by a daemon thread, so a step
            never blocks on it.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._verdict: bool | None = None
        self._thread: threading.Thread | None = None

    def reset(self) -> None:
        """Forget the last verdict; start listening on the first episode."""
        self._verdict = None
        if self._thread is None:
            self._thread = threading.Thread(target=self._listen, daemon=True, name="so101-operator")
            self._thread.start()

    def check(self, robot: Any) -> bool | None:
        """The verdict typed since the last reset, if any."""
        return self._verdict

    def _listen(self) -> None:
        for line in self._stream or sys.stdin:
            key = line.strip().lower()
            if key in ("s", "f"):
                self._verdict = key == "s"


def _confirm_by_keypress(message: str) -> None:
    input(f"{message} Press Enter to start the episode.")


class SO101Env(gym.Env):
    """One SO-101 task on a real arm or its MuJoCo twin, through LeRobot's robot surface.

    ## Description
    A table-top task of MergeVLA's real-arm set (pick and place a cube, push a cube, stack cubes). The policy
    sends absolute joint targets; the adapter clips them (:class:`SafetyLimits`) before they reach the robot.

    ## Action Space
    ``Box(joint_min, joint_max, (6,), float32)``: targets for shoulder_pan, shoulder_lift, elbow_flex,
    wrist_flex, wrist_roll (degrees) and gripper (0 closed .. 100 open). Targets are clipped to the limits and
    to ``max_step`` from the present position; ``info["action_sent"]`` is what the robot received. A
    non-finite action raises :class:`UnsafeActionError` after an emergency stop.

    ## Observation Space
    ``Dict``: ``state`` ``float32 (6,)`` present joint positions (same units as the action); one ``uint8
    (H, W, 3)`` upright image per camera (twin: ``front``, ``wrist``; real arm: LeRobot's camera names);
    ``instruction`` a ``Text``.

    ## Rewards
    1.0 on the step the success detector reports success, else 0.0.

    ## Starting State
    Twin: the arm at ``home_deg`` and the task's cubes laid out from ``self.np_random``, or, with
    ``options={"init_state_id": k}``, from a fixed layout k of the task. Real arm: the arm moves to
    ``home_deg`` slowly (``home_step``), then the operator confirms that the scene is set (Enter, or a
    ``confirm`` callback).

    ## Episode End
    Terminated when the success detector decides (twin: scripted check; real arm: the operator's ``s``/``f``).
    Truncation is left to ``TimeLimit`` (registered ``max_episode_steps``). Ctrl-C or any exception inside
    ``reset``/``step`` (and Ctrl-C between steps) triggers an emergency stop: hold position, wait
    ``estop_hold_s``, torque off; the next ``reset`` re-arms. ``close`` holds and turns torque off.

    ## Arguments
    ``robot`` (``"twin"``, ``"lerobot"`` or a robot object), ``task`` (name or index of
    :data:`~vlamergebench.envs.so101_twin.TASKS`), ``instruction`` (overrides the task's), ``image_size``
    (square side; real cameras are resized to it, None keeps theirs), ``safety`` (:class:`SafetyLimits` or a
    dict), ``home_deg``, ``home_tolerance`` (per joint), ``home_timeout_s``, ``confirm`` (``"auto"``,
    ``"keypress"`` or a callable taking a message), ``success`` (``"twin"``, ``"operator"`` or a detector),
    ``estop_on_sigint``, ``lerobot`` (kwargs of :func:`build_lerobot_follower` when ``robot="lerobot"``),
    ``camera_rendering`` (True; False: the twin repeats its last frames, real cameras stream regardless),
    ``render_mode``.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}

    def __init__(
        self,
        robot: str | Any = "twin",
        task: int | str = 0,
        instruction: str | None = None,
        image_size: int | None = 224,
        safety: SafetyLimits | dict[str, Any] | None = None,
        home_deg: tuple[float, ...] = (0.0, -60.0, 60.0, 60.0, 0.0, 0.0),
        home_tolerance: tuple[float, ...] = (3.0, 3.0, 3.0, 3.0, 3.0, 5.0),
        home_timeout_s: float = 20.0,
        confirm: str | Callable[[str], None] | None = None,
        success: str | Any | None = None,
        estop_on_sigint: bool = True,
        lerobot: dict[str, Any] | None = None,
        camera_rendering: bool = True,
        render_mode: str | None = None,
    ) -> None:
        image_size = check_image_size(image_size, allow_none=True)
        self.render_mode = check_render_mode(render_mode)
        self.task = find_task(task)
        self.instruction = check_instruction(instruction or self.task.instruction, f"SO-101 {self.task.name}")
        self.safety = SafetyLimits.from_dict(safety) if isinstance(safety, dict) else safety or SafetyLimits()
        self.home_deg = np.asarray(home_deg, dtype=np.float64)
        self.home_tolerance = np.asarray(home_tolerance, dtype=np.float64)
        self.home_timeout_s = float(home_timeout_s)
        if self.home_deg.shape != (6,) or self.home_tolerance.shape != (6,):
            raise ValueError(f"home_deg and home_tolerance need 6 values, found {home_deg}, {home_tolerance}")
        self.image_size = image_size
        if robot == "twin":
            robot = SO101Twin(
                self.task.name, image_size=image_size or 224, control_hz=self.safety.rate_limit_hz
            )
        elif robot == "lerobot":
            robot = build_lerobot_follower(**(lerobot or {}))
        elif isinstance(robot, str):
            raise ValueError(f"robot must be 'twin', 'lerobot' or a robot object, found {robot!r}")
        self._robot = robot
        self.suite = "so101_twin" if isinstance(robot, SO101Twin) else "so101_real"
        self._simulated = isinstance(robot, SO101Twin) or bool(getattr(robot, "simulated_time", False))
        self._confirm = _pick_confirm(confirm, self._simulated)
        self._success = _pick_success(success, robot)
        self._estop_on_sigint = estop_on_sigint
        missing = [key for key in ACTION_KEYS if key not in robot.action_features]
        if missing:
            raise ValueError(f"robot {type(robot).__name__} lacks action feature(s) {missing}")
        self.cameras = tuple(k for k, v in robot.observation_features.items() if isinstance(v, tuple))
        camera_shapes = {k: robot.observation_features[k] for k in self.cameras}
        if image_size is not None:
            camera_shapes = dict.fromkeys(self.cameras, (image_size, image_size, 3))
        self.observation_space = spaces.Dict(
            {
                "state": spaces.Box(-np.inf, np.inf, (6,), np.float32),
                **{k: spaces.Box(0, 255, tuple(shape), np.uint8) for k, shape in camera_shapes.items()},
                "instruction": instruction_space(),
            }
        )
        low, high = (np.array(v, dtype=np.float32) for v in (self.safety.joint_min, self.safety.joint_max))
        self.action_space = spaces.Box(low, high, (6,), np.float32)
        self._present: np.ndarray | None = None  # LeRobot units, from the last observation
        self._frames: dict[str, np.ndarray] = {}
        self._estopped = False
        self._in_guard = False
        self._last_send_s = 0.0
        self._previous_sigint: Any = None
        self._init_state_id: int | None = None
        self.set_camera_rendering(camera_rendering)

    # --- catalogue hook (docs/formats.md section 1) -------------------------------------------------------
    @classmethod
    def list_tasks(cls, **_spec_kwargs: Any) -> list[dict[str, Any]]:
        """``[{"task_id", "name", "instruction"}, ...]`` of the SO-101 tasks, without building anything."""
        return [{"task_id": i, "name": t.name, "instruction": t.instruction} for i, t in enumerate(TASKS)]

    # --- Gymnasium API -------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Re-arm, bring the arm home and set the scene (see Starting State)."""
        super().reset(seed=seed)
        init_state_id = reset_options(options).get("init_state_id")
        if init_state_id is not None:
            init_state_id = check_init_state_id(init_state_id, None, f"SO-101 {self.task.name}")
        self._init_state_id = init_state_id
        with self._guard():
            if not self._robot.is_connected:
                self._robot.connect()
                self._install_sigint_handler()
            if self._estopped:
                self._set_torque(True)
                self._estopped = False
            if hasattr(self._robot, "reset_scene"):
                rng = self.np_random
                if self._init_state_id is not None:
                    rng = np.random.default_rng([TASKS.index(self.task), int(self._init_state_id)])
                self._robot.reset_scene(rng, home_deg=self.home_deg)
                self._observe()
            else:
                self._move_home()
            self._confirm(f"SO-101 at home for {self.task.name!r}: set the scene ({self.instruction}).")
            self._success.reset()
            observation = self._observe()
        return observation, self._info(False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Clip, send, wait out the control period, observe; terminated when the detector decides."""
        if self._estopped:
            raise RuntimeError("SO-101 emergency stop is engaged: call reset() to re-arm")
        if self._present is None:
            raise RuntimeError("call reset() before step()")
        with self._guard():
            requested = np.asarray(action, dtype=np.float64).reshape(-1)
            target = clip_action(requested, self._present, *self._limits(self.safety.max_step))
            sent = self._send(target)
            observation = self._observe()
            verdict = self._success.check(self._robot)
        success = verdict is True
        info = self._info(success)
        # action_clipped: the safety layer changed the request; action_sent: what the robot reports it set
        # (a servo may clamp further to its own position limits).
        info.update(
            action_requested=requested, action_sent=sent, action_clipped=bool(np.any(target != requested))
        )
        return observation, float(success), verdict is not None, False, info

    def close(self) -> None:
        """Hold position, turn torque off and disconnect; a second call does nothing."""
        if self._robot.is_connected:
            try:
                with contextlib.suppress(Exception):
                    self._hold()
                self._set_torque(False)
            finally:
                self._robot.disconnect()
        self._restore_sigint_handler()

    def render(self) -> np.ndarray | None:
        """The first camera's last frame (``rgb_array``), or None without a render mode."""
        if self.render_mode != "rgb_array" or not self.cameras:
            return None
        return self._frames[self.cameras[0]].copy()

    @property
    def sim(self) -> tuple[Any, Any]:
        """Twin only: its MuJoCo ``(model, data)``, read by privileged scripted experts."""
        if not isinstance(self._robot, SO101Twin):
            raise AttributeError(f"{type(self._robot).__name__} is not a simulator: no privileged state")
        return self._robot.model, self._robot.data

    def get_sim_state(self) -> np.ndarray:
        """Twin only: the flat MuJoCo state (demo ``states``; replaying ``states[t]`` gives observation t)."""
        if not isinstance(self._robot, SO101Twin):
            raise AttributeError(f"{type(self._robot).__name__} is not a simulator: no state to save")
        return self._robot.get_sim_state()

    # --- chunked execution (docs/formats.md section 1) ----------------------------------------------------
    def set_camera_rendering(self, enabled: bool) -> None:
        """Twin: render cameras (True) or repeat the last frames (False). Real cameras stream regardless."""
        if hasattr(self._robot, "set_camera_rendering"):
            self._robot.set_camera_rendering(enabled)

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Camera frames of the present state, rendered or read now whatever the rendering switch."""
        self.set_camera_rendering(True)
        raw = self._robot.get_observation()
        self._frames = {k: self._resize(raw[k]) for k in self.cameras}
        return {k: v.copy() for k, v in self._frames.items()}

    # --- safety internals ----------------------------------------------------------------------------------
    def _limits(self, step: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.safety.joint_min), np.array(self.safety.joint_max), np.array(step)

    def _send(self, target: np.ndarray) -> np.ndarray:
        """The only call that commands the robot; ``target`` always comes from :func:`clip_action`."""
        if not self._simulated:  # rate limit: wait out the rest of the control period
            period_s = 1.0 / self.safety.rate_limit_hz
            time.sleep(max(0.0, self._last_send_s + period_s - time.monotonic()))
        sent = self._robot.send_action({key: float(v) for key, v in zip(ACTION_KEYS, target, strict=True)})
        self._last_send_s = time.monotonic()
        return np.array([sent.get(key, np.nan) for key in ACTION_KEYS])

    def _hold(self) -> None:
        present = np.array([self._robot.get_observation()[key] for key in ACTION_KEYS], dtype=np.float64)
        self._send(clip_action(present, present, *self._limits(self.safety.max_step)))

    def _move_home(self) -> None:
        deadline_s = time.monotonic() + self.home_timeout_s
        max_steps = int(self.home_timeout_s * self.safety.rate_limit_hz) + 1
        self._observe()
        for _ in range(max_steps):
            if np.all(np.abs(self._present - self.home_deg) <= self.home_tolerance):
                return
            if time.monotonic() > deadline_s:
                break
            self._send(clip_action(self.home_deg, self._present, *self._limits(self.safety.home_step)))
            self._observe()
        raise TimeoutError(
            f"SO-101 did not reach home {self.home_deg.tolist()} within {self.home_timeout_s} s: "
            f"present {np.round(self._present, 1).tolist()}, tolerance {self.home_tolerance.tolist()}"
        )

    def _set_torque(self, enabled: bool) -> None:
        """Twin: its own call; LeRobot follower: its motor bus; otherwise torque off means disconnect."""
        robot = self._robot
        name = "enable_torque" if enabled else "disable_torque"
        if hasattr(robot, name):
            getattr(robot, name)()
        elif hasattr(getattr(robot, "bus", None), name):
            getattr(robot.bus, name)()
        elif not enabled and robot.is_connected:
            robot.disconnect()

    def emergency_stop(self, reason: str) -> None:
        """Hold the present position, wait ``estop_hold_s``, turn torque off; ``reset`` re-arms."""
        self._estopped = True
        logger.error("SO-101 emergency stop: %s", reason)
        if not self._robot.is_connected:
            return
        try:
            self._hold()
            if not self._simulated:
                time.sleep(self.safety.estop_hold_s)
        except Exception:  # a failed hold must not keep the torque from going off
            logger.exception("SO-101 emergency stop: holding position failed")
        finally:
            self._set_torque(False)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Any exception (Ctrl-C included) inside reset/step e-stops the arm, then propagates."""
        self._in_guard = True
        try:
            yield
        except BaseException as error:
            try:
                self.emergency_stop(f"{type(error).__name__}: {error}")
            except Exception:  # report the error that caused the stop, not a follow-up one
                logger.exception("SO-101 emergency stop failed")
            raise
        finally:
            self._in_guard = False

    def _install_sigint_handler(self) -> None:
        if not self._estop_on_sigint or threading.current_thread() is not threading.main_thread():
            return

        def on_sigint(signum: int, frame: Any) -> None:
            if (
                not self._in_guard
            ):  # between steps: stop now; inside reset/step the guard stops after unwinding
                self.emergency_stop("Ctrl-C between steps")
            raise KeyboardInterrupt

        self._previous_sigint = signal.signal(signal.SIGINT, on_sigint)

    def _restore_sigint_handler(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    # --- observation ----------------------------------------------------------------------------------------
    def _observe(self) -> dict[str, Any]:
        raw = self._robot.get_observation()
        self._present = np.array([raw[key] for key in ACTION_KEYS], dtype=np.float64)
        self._frames = {k: self._resize(raw[k]) for k in self.cameras}
        return {
            "state": self._present.astype(np.float32),
            **{k: v.copy() for k, v in self._frames.items()},
            "instruction": self.instruction,
        }

    def _resize(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame, dtype=np.uint8)
        size = self.image_size
        if size is None or frame.shape[:2] == (size, size):
            return frame
        import cv2

        return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": success,
            "task": self.task.name,
            "task_id": TASKS.index(self.task),
            "suite": self.suite,
            "instruction": self.instruction,
            "init_state_id": self._init_state_id,
        }


def _pick_confirm(confirm: str | Callable[[str], None] | None, simulated: bool) -> Callable[[str], None]:
    if callable(confirm):
        return confirm
    if confirm is None:
        confirm = "auto" if simulated else "keypress"
    if confirm == "auto":
        return lambda message: None
    if confirm == "keypress":
        return _confirm_by_keypress
    raise ValueError(f"confirm must be 'auto', 'keypress' or a callable, found {confirm!r}")


def _pick_success(success: str | Any | None, robot: Any) -> Any:
    if success is None:
        success = "twin" if hasattr(robot, "is_success") else "operator"
    if success == "twin":
        if not hasattr(robot, "is_success"):
            raise ValueError(
                f"success='twin' needs a robot with is_success(); {type(robot).__name__} has none"
            )
        return TwinSuccess()
    if success == "operator":
        return OperatorSuccess()
    if isinstance(success, str) or not (hasattr(success, "check") and hasattr(success, "reset")):
        raise ValueError(
            f"success must be 'twin', 'operator' or an object with reset() and check(robot): {success!r}"
        )
    return success


def build_lerobot_follower(
    port: str,
    robot_id: str = "so101",
    calibration_dir: str | None = None,
    cameras: dict[str, dict[str, Any]] | None = None,
) -> Any:
    """LeRobot's ``SO101Follower`` for the arm on ``port`` (e.g. ``/dev/ttyACM0``), not yet connected.

    Args:
        port: Serial port of the arm's motor bus.
        robot_id: LeRobot robot id; names the calibration file ``<calibration_dir>/<robot_id>.json``.
        calibration_dir: Where ``lerobot-calibrate`` wrote that file (LeRobot's default when None).
        cameras: ``{name: {"index_or_path": ..., "width": ..., "height": ..., "fps": ...}}`` OpenCV cameras.

    The follower's own ``max_relative_target`` stays off: this adapter clips before LeRobot sees a command.
    """
    try:
        from lerobot.cameras.opencv import OpenCVCameraConfig
        from lerobot.robots.so_follower import SO101Follower, SO101FollowerConfig
    except ImportError as error:
        raise gym.error.DependencyNotInstalled(
            f"the real SO-101 arm needs LeRobot's follower ({error}); install it as docs/so101.md says "
            "(lerobot 0.4.4 with --no-deps, plus the 'so101-lerobot' extra and a torchvision that imports)"
        ) from error
    from pathlib import Path

    config = SO101FollowerConfig(
        port=port,
        id=robot_id,
        calibration_dir=Path(calibration_dir) if calibration_dir else None,  # LeRobot needs a Path, not a str
        cameras={name: OpenCVCameraConfig(**spec) for name, spec in (cameras or {}).items()},
        disable_torque_on_disconnect=True,
    )
    return SO101Follower(config)
