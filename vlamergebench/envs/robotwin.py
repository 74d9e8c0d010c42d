"""RoboTwin 2.0 bimanual tasks behind vlamergebench's env contract, over a RoboTwin checkout the user gives.

RoboTwin's task objects (``envs/<task>.py``, subclasses of ``Base_Task``) are driven through their own API:
``setup_demo`` builds the SAPIEN scene for a seed, ``take_action`` executes one joint (``qpos``) or
end-effector (``ee``) target with TOPP interpolation and checks success every physics sub-step, ``get_obs``
renders the cameras, ``play_once`` is the scripted expert, ``close_env`` frees the scene. RoboTwin is not a
dependency: it needs SAPIEN + Vulkan, cuRobo (CUDA only) and assets from a model hub, none of which exist
on a CPU-only machine (research/so101-robotwin-feasibility.md, part B). Point ``ROBOTWIN_ROOT`` (or the
``robotwin_root`` kwarg) at a checkout of RoboTwin-Platform/RoboTwin (``stable_2.0`` or ``main``) with its
assets downloaded; anything missing raises ``RoboTwinUnavailable`` naming what to install
(vlamergebench/envs/robotwin_checkout.py).

The official evaluation protocol (``script/eval_policy.py``) and how it maps here:

* Seeds start at ``100000 * (1 + protocol_seed)``; episode ``k`` (``options["init_state_id"] = k``, 0..99,
  100 episodes per task) uses the k-th seed whose scene is stable and, with ``expert_check`` (default, as
  upstream), which RoboTwin's own expert (``play_once``) solves. Usable seeds are found in order and kept,
  so episode k gets the same seed whatever order episodes run in (a fresh process re-checks seeds 0..k).
* Step limits are RoboTwin's per task (``_eval_step_limit.yml``, copied into :data:`STEP_LIMITS` and the
  registered ``max_episode_steps``). ``take_action`` ignores actions past the limit, so the env reports
  truncation at RoboTwin's own counter too; a checkout whose limit differs from the registered one raises.
* The instruction comes from RoboTwin's generator (``description/utils/generate_episode_instructions.py``)
  fed with the expert's episode info (``unseen`` templates by default) and is drawn with ``self.np_random``
  (upstream uses the global numpy RNG). The generator's own ``random`` calls run under the episode's seed and
  the global state is restored. Without episode info (no expert check) it is the task's ``full_description``.
* Domains: ``clean`` (``demo_clean.yml``) and ``randomized`` (``demo_randomized.yml``), one id each.

Everything RoboTwin-specific goes through a backend object (``RoboTwinCheckout``); tests use a pure-Python
stand-in with the same surface.
"""

from __future__ import annotations

import random
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlamergebench.envs.contract import (
    RESET_OPTIONS,
    check_image_size,
    check_init_state_id,
    check_instruction,
    check_render_mode,
    instruction_space,
    reset_options,
)
from vlamergebench.envs.robotwin_checkout import EPISODES_PER_TASK, RoboTwinCheckout

# RoboTwin 2.0's 50 tasks and evaluation step limits (task_config/_eval_step_limit.yml, the same in
# stable_2.0 13c3c47 and main cf47ab5): how many take_action calls an episode may use.
# fmt: off
STEP_LIMITS: dict[str, int] = {
    "adjust_bottle": 400, "beat_block_hammer": 400, "blocks_ranking_rgb": 1200, "blocks_ranking_size": 1200,
    "click_alarmclock": 400, "click_bell": 400, "dump_bin_bigbin": 600, "grab_roller": 400,
    "handover_block": 800, "handover_mic": 600, "hanging_mug": 900, "lift_pot": 400, "move_can_pot": 400,
    "move_pillbottle_pad": 400, "move_playingcard_away": 400, "move_stapler_pad": 400, "open_laptop": 700,
    "open_microwave": 1500, "pick_diverse_bottles": 400, "pick_dual_bottles": 400, "place_a2b_left": 400,
    "place_a2b_right": 400, "place_bread_basket": 700, "place_bread_skillet": 500, "place_burger_fries": 500,
    "place_can_basket": 700, "place_cans_plasticbox": 800, "place_container_plate": 400,
    "place_dual_shoes": 600, "place_empty_cup": 500, "place_fan": 400, "place_mouse_pad": 400,
    "place_object_basket": 700, "place_object_scale": 400, "place_object_stand": 400,
    "place_phone_stand": 400, "place_shoe": 500, "press_stapler": 400, "put_bottles_dustbin": 1700,
    "put_object_cabinet": 700, "rotate_qrcode": 400, "scan_object": 500, "shake_bottle": 700,
    "shake_bottle_horizontally": 700, "stack_blocks_three": 1200, "stack_blocks_two": 800,
    "stack_bowls_three": 1200, "stack_bowls_two": 900, "stamp_seal": 400, "turn_switch": 400,
}
# fmt: on
TASKS = tuple(STEP_LIMITS)
DOMAINS = {"clean": "demo_clean", "randomized": "demo_randomized"}  # ours -> RoboTwin task config
ACTION_TYPES = ("qpos", "ee")
INSTRUCTION_TYPES = ("seen", "unseen")
SEEDS_PER_BLOCK = 100_000  # script/eval_policy.py: st_seed = 100000 * (1 + seed)
DEFAULT_CAMERAS = ("head_camera", "left_camera", "right_camera")
# Upstream skips any seed whose set-up or expert raises; this many in a row means a broken set-up instead.
MAX_ERRORS_IN_A_ROW = 20
# RoboTwin's clear_cache_freq (task configs): free SAPIEN's asset cache every this many closed scenes.
CLEAR_CACHE_EVERY = 5
REQUIRES = "CUDA GPU + RoboTwin 2.0 checkout with assets (ROBOTWIN_ROOT)"


class RoboTwinEnv(gym.Env):
    """One RoboTwin 2.0 task (SAPIEN, aloha-agilex dual arm by default) under the official protocol.

    ## Description
    A bimanual tabletop task of RoboTwin 2.0 (50 tasks: :data:`TASKS`). Success is the task's
    ``check_success()``, which RoboTwin checks at every physics sub-step of an action.

    ## Action Space
    ``action_type="qpos"`` (default): ``Box((14,), float32)`` for aloha-agilex, ``[left joints (6, rad), left
    gripper, right joints (6), right gripper]``, grippers 0 closed .. 1 open, joint bounds +-2 pi (the URDF's
    limits are the planner's business). ``"ee"``: ``Box((16,))``, per arm xyz (m) + quaternion (4) + gripper.
    Each action is one ``take_action`` call: a TOPP-timed motion to the target. A wrong shape or a non-finite
    value raises ``ValueError``.

    ## Observation Space
    ``Dict``: ``<camera>_image`` ``uint8 (S, S, 3)`` upright, RoboTwin's frame resized (area) to the square
    ``image_size``, for each of ``cameras`` (default head, left wrist, right wrist); ``state`` ``float32``:
    the joint vector (``qpos``, 14) or the end poses (``ee``, 16), in the action's layout; ``instruction``.

    ## Rewards
    1.0 on the step that reaches success, else 0.0.

    ## Starting State
    ``reset(options={"init_state_id": k})``: protocol episode ``k`` (0..99), see the module docstring.
    ``options={"robotwin_seed": s}``: RoboTwin seed ``s`` directly (no expert check; data collection).
    Neither: a seed in 0..99999 drawn from ``self.np_random`` (below every evaluation seed). ``seed``
    seeds ``self.np_random``, which picks the instruction.

    ## Episode End
    Terminated on success; truncated when RoboTwin's action counter reaches the task's step limit (the
    registered ``max_episode_steps`` has the same value; ``TimeLimit`` agrees).

    ## Arguments
    ``task`` (name or index in :data:`TASKS`), ``domain`` (``clean`` | ``randomized``, set by the id),
    ``action_type``, ``cameras``, ``image_size`` (224), ``instruction_type`` (``unseen``), ``expert_check``
    (True), ``protocol_seed`` (0), ``robotwin_root`` (None: ``ROBOTWIN_ROOT``), ``embodiment``
    (``aloha-agilex``), ``backend`` (an object with :class:`RoboTwinCheckout`'s surface; tests),
    ``camera_rendering`` (True; False returns the last frames without reading new ones), ``render_mode``.

    Privileged access: ``env.unwrapped.task_env`` is RoboTwin's task object of the current episode.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: int | str,
        domain: str = "clean",
        action_type: str = "qpos",
        cameras: tuple[str, ...] | list[str] = DEFAULT_CAMERAS,
        image_size: int = 224,
        instruction_type: str = "unseen",
        expert_check: bool = True,
        protocol_seed: int = 0,
        robotwin_root: str | None = None,
        embodiment: str = "aloha-agilex",
        backend: Any = None,
        camera_rendering: bool = True,
        render_mode: str | None = None,
    ) -> None:
        self.task_name = _resolve_task(task)
        self.task_id = TASKS.index(self.task_name)
        for name, value, valid in (
            ("domain", domain, DOMAINS),
            ("action_type", action_type, ACTION_TYPES),
            ("instruction_type", instruction_type, INSTRUCTION_TYPES),
        ):
            if value not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got {value!r}")
        image_size, render_mode = check_image_size(image_size), check_render_mode(render_mode)
        if not cameras or len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be distinct RoboTwin camera names, got {cameras!r}")
        self.domain, self.action_type, self.instruction_type = domain, action_type, instruction_type
        self.cameras, self.image_size, self.render_mode = tuple(cameras), image_size, render_mode
        self.expert_check, self.protocol_seed = bool(expert_check), int(protocol_seed)
        self.backend = backend if backend is not None else RoboTwinCheckout(robotwin_root, embodiment)
        self.task_env: Any = None
        self._usable_seeds: list[tuple[int, dict | None]] = []  # protocol episodes found so far, in order
        self._next_candidate = SEEDS_PER_BLOCK * (1 + self.protocol_seed)
        self._errors_in_a_row = 0
        self._closes = 0
        self._camera_rendering = bool(camera_rendering)
        self._frames = {f"{c}_image": np.zeros((image_size, image_size, 3), np.uint8) for c in self.cameras}
        self._episode: dict[str, Any] = {}

        left, right = self.backend.arm_dims
        if action_type == "qpos":  # loose joint bounds: RoboTwin's planner enforces the URDF's limits
            low = np.concatenate([np.full(left, -2 * np.pi), [0.0], np.full(right, -2 * np.pi), [0.0]])
            high = np.concatenate([np.full(left, 2 * np.pi), [1.0], np.full(right, 2 * np.pi), [1.0]])
        else:  # per arm: xyz (m, around the table), quaternion, gripper
            pose = np.array([2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0])
            low = np.concatenate([-pose, [0.0], -pose, [0.0]])
            high = np.concatenate([pose, [1.0], pose, [1.0]])
        self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        image = spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = spaces.Dict(
            {
                **dict.fromkeys(self._frames, image),
                "state": spaces.Box(-np.inf, np.inf, self.action_space.shape, np.float32),
                "instruction": instruction_space(),
            }
        )

    # --- catalogue hook (docs/formats.md section 1) ---------------------------------------------------------
    @classmethod
    def list_tasks(
        cls, task: int | str | None = None, domain: str = "clean", **_: Any
    ) -> list[dict[str, Any]]:
        """The task(s) behind a registered id, marked as needing a GPU and RoboTwin; imports nothing.

        ``instruction`` is the task name in words: RoboTwin draws the real one per episode.
        """
        names = TASKS if task is None else (_resolve_task(task),)
        return [
            {
                "task_id": TASKS.index(name),
                "name": name,
                "instruction": name.replace("_", " "),
                "domain": domain,
                "step_limit": STEP_LIMITS[name],
                "requires": REQUIRES,
            }
            for name in names
        ]

    # --- protocol -----------------------------------------------------------------------------------------
    def _setup(self, seed: int, episode: int) -> None:
        """A fresh RoboTwin scene for ``seed`` (the previous one is closed first)."""
        self._close_task()
        task_env = self.backend.make_task(self.task_name)
        with self.backend.session():
            task_env.setup_demo(
                now_ep_num=episode,
                seed=seed,
                is_test=True,
                **self.backend.setup_kwargs(self.task_name, DOMAINS[self.domain]),
            )
        self.task_env = task_env

    def _expert_solves(self, seed: int) -> tuple[bool, dict | None, Exception | None]:
        """Upstream's expert check: a stable scene the scripted expert solves; an error skips the seed."""
        try:
            self._setup(seed, len(self._usable_seeds))
            if not self.expert_check:
                return True, None, None
            with self.backend.session():
                episode_info = self.task_env.play_once()
                solved = bool(self.task_env.plan_success and self.task_env.check_success())
            return solved, (episode_info or {}).get("info"), None
        except Exception as error:
            return False, None, error  # UnStableError (an unstable scene) is the common one
        finally:
            self._close_task()

    def _random_scene(self) -> int:
        """Set up a scene from a seed drawn from ``self.np_random``, skipping seeds that raise (unstable)."""
        for _ in range(MAX_ERRORS_IN_A_ROW):
            seed = int(self.np_random.integers(SEEDS_PER_BLOCK))
            try:
                self._setup(seed, 0)
                return seed
            except Exception as error:
                last_error = error
        raise RuntimeError(
            f"RoboTwin {self.task_name}: {MAX_ERRORS_IN_A_ROW} random seeds in a row raised; the last error: "
            f"{type(last_error).__name__}: {last_error}"
        ) from last_error

    def protocol_seed_of(self, episode: int) -> tuple[int, dict | None]:
        """RoboTwin seed and expert episode info of protocol episode ``episode`` (found in order, kept)."""
        episode = check_init_state_id(episode, EPISODES_PER_TASK, f"RoboTwin {self.task_name}")
        limit = SEEDS_PER_BLOCK * (2 + self.protocol_seed)  # never wander into the next protocol seed's block
        while len(self._usable_seeds) <= episode:
            if self._next_candidate >= limit:
                raise RuntimeError(
                    f"RoboTwin {self.task_name}: fewer than {episode + 1} usable seeds in "
                    f"{limit - SEEDS_PER_BLOCK}..{limit - 1}"
                )
            seed, self._next_candidate = self._next_candidate, self._next_candidate + 1
            usable, info, error = self._expert_solves(seed)
            self._errors_in_a_row = 0 if error is None else self._errors_in_a_row + 1
            if self._errors_in_a_row >= MAX_ERRORS_IN_A_ROW:  # a broken set-up, not unlucky seeds
                raise RuntimeError(
                    f"RoboTwin {self.task_name}: seeds {seed - MAX_ERRORS_IN_A_ROW + 1}..{seed} all raised; "
                    f"the last error: {type(error).__name__}: {error}"
                ) from error
            if usable:
                self._usable_seeds.append((seed, info))
        return self._usable_seeds[episode]

    def _instruction(self, seed: int, episode_info: dict | None) -> str:
        # RoboTwin's generator shuffles and picks object descriptions with Python's global `random`: run it
        # under the episode's seed, then put the caller's state back; the instruction is the episode's.
        state = random.getstate()
        random.seed(seed)
        try:
            candidates = self.backend.describe(self.task_name, episode_info, self.instruction_type)
        finally:
            random.setstate(state)
        if not candidates:
            raise RuntimeError(
                f"RoboTwin {self.task_name}: the instruction generator returned nothing for {episode_info}"
            )
        instruction = str(candidates[int(self.np_random.integers(len(candidates)))])
        return check_instruction(instruction, f"RoboTwin {self.task_name}")

    # --- observations -------------------------------------------------------------------------------------
    def set_camera_rendering(self, enabled: bool) -> None:
        """Read camera frames for returned observations (True) or repeat the last frames (False)."""
        self._camera_rendering = bool(enabled)

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Capture the selected cameras now (upright ``uint8``, resized), whatever the rendering switch."""
        with self.backend.session():
            raw = self.task_env.get_obs()
        self._store_frames(raw)
        return {key: frame.copy() for key, frame in self._frames.items()}

    def _store_frames(self, raw: dict[str, Any]) -> None:
        import cv2

        for camera in self.cameras:
            if camera not in raw["observation"] or "rgb" not in raw["observation"][camera]:
                raise KeyError(
                    f"RoboTwin get_obs() has no {camera!r} rgb; it has {sorted(raw['observation'])}"
                )
            frame = np.asarray(raw["observation"][camera]["rgb"], dtype=np.uint8)  # (H, W, 3)
            if frame.shape[:2] != (self.image_size, self.image_size):
                frame = cv2.resize(frame, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
            self._frames[f"{camera}_image"] = frame

    def _observation(self) -> dict[str, Any]:
        task_env = self.task_env
        data_type = getattr(task_env, "data_type", None)
        with self.backend.session():
            if data_type is not None and not self._camera_rendering:
                data_type["rgb"], restore = False, data_type.get("rgb", False)  # skip reading frames back
                try:
                    raw = task_env.get_obs()
                finally:
                    data_type["rgb"] = restore
            else:
                raw = task_env.get_obs()
        if self._camera_rendering:
            self._store_frames(raw)
        if self.action_type == "qpos":
            state = np.asarray(raw["joint_action"]["vector"], dtype=np.float32)
        else:
            pose = raw["endpose"]
            state = np.concatenate(
                [pose["left_endpose"], [pose["left_gripper"]], pose["right_endpose"], [pose["right_gripper"]]]
            ).astype(np.float32)
        if state.shape != self.observation_space["state"].shape:
            raise ValueError(
                f"RoboTwin {self.task_name}: state has shape {state.shape}, "
                f"expected {self.observation_space['state'].shape}"
            )
        return {
            **{k: f.copy() for k, f in self._frames.items()},
            "state": state,
            "instruction": self._episode["instruction"],
        }

    def _info(self, success: bool) -> dict[str, Any]:
        return {
            "is_success": success,
            "task": self.task_name,
            "task_id": self.task_id,
            "suite": f"robotwin_{self.domain}",
            **self._episode,
            "step": int(self.task_env.take_action_cnt),
            "step_limit": int(self.task_env.step_lim),
        }

    # --- Gymnasium API ------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        """Build the scene of the episode chosen by ``options`` (see Starting State)."""
        super().reset(seed=seed)
        options = reset_options(options, valid=(*RESET_OPTIONS, "robotwin_seed"))
        if len(options) > 1:
            raise ValueError(
                f"reset options: at most one of ['init_state_id', 'robotwin_seed'], got {sorted(options)}"
            )
        episode, info = options.get("init_state_id"), None
        if episode is not None:
            robotwin_seed, info = self.protocol_seed_of(episode)
        elif "robotwin_seed" in options:
            robotwin_seed = options["robotwin_seed"]
            if (
                isinstance(robotwin_seed, bool)
                or not isinstance(robotwin_seed, (int, np.integer))
                or robotwin_seed < 0
            ):
                raise ValueError(f"robotwin_seed must be a non-negative int, got {robotwin_seed!r}")
        else:
            robotwin_seed = self._random_scene()
        if episode is not None or "robotwin_seed" in options:
            self._setup(int(robotwin_seed), 0 if episode is None else int(episode))
        step_limit = int(self.task_env.step_lim)
        if step_limit != STEP_LIMITS[self.task_name]:  # the registered max_episode_steps
            raise RuntimeError(
                f"RoboTwin {self.task_name}: the checkout's step limit is {step_limit}, the registered id's "
                f"{STEP_LIMITS[self.task_name]}; the ids follow RoboTwin 2.0's _eval_step_limit.yml"
            )
        instruction = self._instruction(int(robotwin_seed), info)
        with self.backend.session():
            self.task_env.set_instruction(instruction=instruction)
        self._episode = {
            "instruction": instruction,
            "init_state_id": episode,
            "robotwin_seed": int(robotwin_seed),
        }
        return self._observation(), self._info(False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """One ``take_action`` call; truncated at RoboTwin's own step limit (also the registered one)."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(
                f"action has shape {action.shape}, expected {self.action_space.shape} ({self.action_type})"
            )
        if not np.all(np.isfinite(action)):
            bad = np.flatnonzero(~np.isfinite(action)).tolist()
            raise ValueError(f"action has non-finite entries at indices {bad}: {action.tolist()}")
        if self.task_env is None:
            raise RuntimeError("step() called before reset()")
        with self.backend.session():
            self.task_env.take_action(action, action_type=self.action_type)
        success = bool(self.task_env.eval_success)
        truncated = not success and self.task_env.take_action_cnt >= self.task_env.step_lim
        return self._observation(), float(success), success, truncated, self._info(success)

    def render(self) -> np.ndarray | None:
        """The first camera's last frame (``render_mode="rgb_array"``)."""
        return None if self.render_mode is None else next(iter(self._frames.values())).copy()

    def _close_task(self, clear_cache: bool = False) -> None:
        if self.task_env is not None:
            self._closes += 1
            with self.backend.session():
                self.task_env.close_env(clear_cache=clear_cache or self._closes % CLEAR_CACHE_EVERY == 0)
            self.task_env = None

    def close(self) -> None:
        """Close RoboTwin's scene and free its asset cache; a second call does nothing."""
        self._close_task(clear_cache=True)


def _resolve_task(task: int | str) -> str:
    if isinstance(task, (int, np.integer)) and not isinstance(task, bool) and 0 <= int(task) < len(TASKS):
        return TASKS[int(task)]
    if isinstance(task, str) and task in STEP_LIMITS:
        return task
    raise ValueError(
        f"unknown RoboTwin task {task!r}; pass an index 0..{len(TASKS) - 1} or one of {list(TASKS)}"
    )
