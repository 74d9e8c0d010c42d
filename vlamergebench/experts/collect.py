"""Scripted demonstration collection: physics-only rollouts, image rendering by state replay, LIBERO HDF5.

Episode k of a collection starts from the task's fixed init state ``start_init_state + k`` with seed
``seed + k``. Each episode runs the scripted expert with the cameras off (~5-10 ms a step instead of ~100),
recording the simulator state before every action. Only successful episodes are kept: their states are
replayed with the cameras on (``env.observe_state``), which renders exactly the observation the policy would
have seen at each step, and written through :mod:`vlamergebench.policies.demos`.

With ``action_noise`` > 0 the collection injects noise as DART does (Laskey et al., "DART: Noise Injection for
Robust Imitation Learning", arXiv 1703.09327): the simulator executes the expert's arm command plus zero-mean
Gaussian noise (the six arm dimensions, clipped to [-1, 1]; never the gripper), while the recorded action
stays the expert's own. The scripted expert is closed-loop, so the recorded actions are its corrections from
the states the noise leads to: the demonstrations cover the near-misses a learner drifts into. The noise is
drawn from the episode's seed.

The output file appears only when the collection finishes (``<file>.partial`` before); ``resume=True``
continues an interrupted collection after the last attempted episode.

Example::

    vlamergebench collect-demos --suite libero_object --task 0 --episodes 50 --out demos/
    vlamergebench collect-demos --suite libero_object --task 0 --episodes 3 --no-save   # prints success
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import vlamergebench.envs
from vlamergebench.configs import from_mapping
from vlamergebench.policies.demos import DemoFile, DemoWriter
from vlamergebench.policies.scripted.libero import LiberoScriptedExpert
from vlamergebench.provenance import git_revision, package_versions


@dataclass(frozen=True)
class CollectConfig:
    """What to collect (hashed into provenance) and where; see the module docstring for the protocol.

    Attributes:
        suite: LIBERO suite name (``libero_object``, ``libero_spatial_swap``, ...).
        task: task id (LIBERO's order) or task name.
        episodes: number of episodes (init states) to attempt; only successes are written.
        start_init_state: init state of the first episode.
        seed: seed of the first episode (episode k uses ``seed + k``).
        image_size: camera side in pixels for the stored images.
        out: output directory (file ``<suite>_task<id>.hdf5``), or None to only roll out and report.
        resume: continue ``<file>.partial`` after its last attempted episode.
        action_noise: standard deviation of the noise added to the executed arm command (0: none; DART).
    """

    suite: str
    task: int | str
    episodes: int
    start_init_state: int = 0
    seed: int = 0
    image_size: int = 128
    out: str | None = None
    resume: bool = False
    action_noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.action_noise <= 1.0:
            raise ValueError(f"action_noise must be a standard deviation in [0, 1], got {self.action_noise}")
        if self.suite not in vlamergebench.envs.LIBERO_ENV_IDS:
            raise ValueError(
                f"unknown suite {self.suite!r}; valid: {sorted(vlamergebench.envs.LIBERO_ENV_IDS)}"
            )
        if self.episodes < 1 or self.start_init_state < 0:
            raise ValueError(
                f"episodes must be >= 1 and start_init_state >= 0, "
                f"got episodes={self.episodes}, start_init_state={self.start_init_state}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "CollectConfig") -> CollectConfig:
        """Build from a dict; unknown keys raise."""
        return from_mapping(cls, values, where)

    @property
    def env_id(self) -> str:
        """The registered Gymnasium id of the suite."""
        return vlamergebench.envs.LIBERO_ENV_IDS[self.suite]


@dataclass
class Episode:
    """One attempted episode: its init state, outcome, length and (successful ones) the recorded arrays."""

    init_state_id: int
    seed: int
    success: bool
    steps: int
    actions: np.ndarray = field(repr=False)
    states: np.ndarray = field(repr=False)


@dataclass
class CollectResult:
    """What a collection did; seconds are wall-clock on a possibly shared machine."""

    episodes: list[Episode]
    path: Path | None
    task_id: int = -1
    task_name: str = ""
    rollout_seconds: float = 0.0
    render_seconds: float = 0.0

    @property
    def successes(self) -> int:
        """Number of successful (recorded) episodes."""
        return sum(e.success for e in self.episodes)


ARM_DIMENSIONS = 6  # the noise never touches the gripper (the last dimension)


def run_expert_episode(
    env: gym.Env, expert: LiberoScriptedExpert, init_state_id: int, seed: int, action_noise: float = 0.0
) -> Episode:
    """Roll the expert out physics-only; record the state before and the action of every step.

    With ``action_noise`` the executed arm command is perturbed (DART, module docstring); the recorded action
    is the expert's.

    Returns:
        An :class:`Episode` with ``actions`` ``(T, 7)`` and ``states`` ``(T, S)`` (state before step t).
    """
    unwrapped = env.unwrapped
    unwrapped.set_camera_rendering(False)
    env.reset(seed=seed, options={"init_state_id": init_state_id})
    expert.reset()
    noise = np.random.default_rng(seed)
    actions, states = [], []
    terminated = truncated = False
    while not (terminated or truncated):
        states.append(unwrapped.get_sim_state())
        actions.append(expert.act())
        executed = np.array(actions[-1], dtype=np.float64)
        if action_noise > 0:
            executed[:ARM_DIMENSIONS] += noise.normal(0.0, action_noise, ARM_DIMENSIONS)
            executed[:ARM_DIMENSIONS] = np.clip(executed[:ARM_DIMENSIONS], -1.0, 1.0)
        _, _, terminated, truncated, _ = env.step(executed)
    return Episode(
        init_state_id, seed, bool(terminated), len(actions), np.asarray(actions), np.asarray(states)
    )


def render_demo(env: gym.Env, episode: Episode) -> dict[str, np.ndarray]:
    """Replay an episode's states with the cameras on; the ``obs/`` arrays of a LIBERO-layout demo."""
    unwrapped = env.unwrapped
    unwrapped.set_camera_rendering(True)
    frames: dict[str, list[np.ndarray]] = {}
    for state in episode.states:
        observation = unwrapped.observe_state(state)
        robot = unwrapped.robot_state()
        step = {
            "agentview_rgb": observation["agentview_image"],
            "eye_in_hand_rgb": observation["wrist_image"],
            "ee_pos": robot["ee_pos"],
            "ee_ori": robot["ee_ori"],
            "ee_states": np.concatenate([robot["ee_pos"], robot["ee_ori"]]),
            "gripper_states": robot["gripper_states"],
            "joint_states": robot["joint_states"],
            # LIBERO's robot_states order: gripper qpos (2), eef pos (3), eef quat xyzw (4)
            "robot_states": np.concatenate([robot["gripper_states"], robot["ee_pos"], robot["ee_quat_xyzw"]]),
        }
        for key, value in step.items():
            frames.setdefault(key, []).append(value)
    return {key: np.stack(values) for key, values in frames.items()}


def _attempted(path: Path) -> set[int]:
    """Init states already attempted in a partial file (successes and failures, from its provenance)."""
    with DemoFile(path) as partial:
        return set(partial.provenance.get("attempted_init_states", []))


def collect_demos(config: CollectConfig, progress: bool = True) -> CollectResult:
    """Run ``config.episodes`` scripted episodes; write the successful ones (see the module docstring)."""
    from tqdm import tqdm

    env = gym.make(config.env_id, task=config.task, image_size=config.image_size, camera_rendering=False)
    try:
        unwrapped = env.unwrapped
        ids = range(config.start_init_state, config.start_init_state + config.episodes)
        if ids[-1] >= len(unwrapped.init_states):
            raise ValueError(
                f"{config.suite}/{unwrapped.task_name} has {len(unwrapped.init_states)} init states; "
                f"episodes {config.start_init_state}..{ids[-1]} need init states up to {ids[-1]}"
            )
        expert = LiberoScriptedExpert(unwrapped.sim_env)  # builds the simulator
        path = (
            None if config.out is None else Path(config.out) / f"{config.suite}_task{unwrapped.task_id}.hdf5"
        )
        writer, attempted = None, []
        if path is not None:
            partial = path.with_name(path.name + ".partial")
            attempted = sorted(_attempted(partial)) if config.resume and partial.exists() else []
            writer = _open_writer(path, config, unwrapped, attempted)
        result = CollectResult([], path, unwrapped.task_id, unwrapped.task_name)
        bar = tqdm(ids, desc=f"{config.suite}/{unwrapped.task_id}", unit="episode", disable=not progress)
        try:
            for init_state_id in bar:
                if init_state_id in attempted:
                    continue
                start = time.perf_counter()
                seed = config.seed + (init_state_id - config.start_init_state)
                episode = run_expert_episode(env, expert, init_state_id, seed, config.action_noise)
                result.rollout_seconds += time.perf_counter() - start
                result.episodes.append(episode)
                if writer is not None:
                    start = time.perf_counter()
                    if episode.success:
                        obs = render_demo(env, episode)
                        robot_states = obs.pop("robot_states")
                        attrs = {"init_state_id": init_state_id, "seed": seed}
                        writer.add_demo(
                            episode.actions, episode.states, obs, robot_states=robot_states, attrs=attrs
                        )
                    attempted.append(init_state_id)
                    writer.update_provenance({"attempted_init_states": attempted})
                    result.render_seconds += time.perf_counter() - start
                bar.set_postfix(successes=f"{result.successes}/{len(result.episodes)}")
        except BaseException:
            if writer is not None:
                writer.abort()  # keep <file>.partial for resume=True
            raise
        if writer is not None:
            writer.close()
        return result
    finally:
        env.close()


def _open_writer(path: Path, config: CollectConfig, env: Any, attempted: list[int]) -> DemoWriter:
    problem = env.sim_env.env.parsed_problem
    provenance = {
        "collect_config": {k: v for k, v in asdict(config).items() if k not in ("out", "resume")},
        "expert": "vlamergebench.policies.scripted.libero:LiberoScriptedExpert",
        "env_id": config.env_id,
        "versions": package_versions(),
        "git_rev": git_revision(),
        "attempted_init_states": attempted,
    }
    return DemoWriter(
        path,
        env_name=f"{config.suite}/{env.task_name}",
        problem_info={
            "problem_name": problem.get("problem_name", ""),
            "domain_name": problem.get("domain_name", ""),
            "language_instruction": env.instruction,
        },
        env_args={
            "env_id": config.env_id,
            "task": env.task_name,
            "image_size": config.image_size,
            "settle_steps": env.settle_steps,
        },
        bddl_file_name=str(env._simulator_kwargs()["bddl_file_name"]),
        provenance=provenance,
        resume=config.resume,
    )
