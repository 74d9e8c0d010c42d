"""Every registered ``vlamergebench/*`` id against the env contract (vlamergebench/envs/contract.py).

Gymnasium's ``check_env`` and a same-seed determinism check (two envs, same seed and init state, same actions:
same observations) run on one checked id per code path. Ids that share the representative's entry point and
kwargs, and differ only in the kwargs listed as ``varies`` (LIBERO's ``suite`` and RoboTwin's ``task`` and
``domain``, which only select data: BDDL files, init states, scene assets), are covered by it; the test fails
if a registered id is neither checked nor represented. LIBERO instructions of every suite are checked without
a simulator in test_libero.py. An id whose optional dependency is missing here is skipped with the reason.

Images at 8 px and three steps: building a LIBERO simulator is the cost (~6 s each, four of them).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.env_checker import check_env, data_equivalence
from gymnasium.utils.passive_env_checker import env_render_passive_checker
from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit

import vlamergebench
from vlamergebench.envs import contract

gym.register_envs(vlamergebench)  # Gymnasium's idiom: importing the package registered every id

IMAGE_SIZE = 8
STEPS = 3


@dataclass(frozen=True)
class Case:
    """One checked id, the make kwargs it is checked with, and the spec kwargs its represented ids vary in."""

    env_id: str
    make_kwargs: dict[str, Any] = field(default_factory=dict)
    varies: tuple[str, ...] = ()
    hardware: str | None = None  # a requirement no package provides: always skipped, with this reason


CASES = (
    Case("vlamergebench/LIBERO-Object-v0", {"task": 0}, varies=("suite",)),
    Case(
        "vlamergebench/LIBERO-Perturbed-Object-v0",
        # scene axes (camera, light, clean robot init) and both wrappers (language, sensor noise) at once
        {
            "task": 0,
            "perturbation": {"camera": 1, "light": 1, "robot_init_clean": 1, "language": 1, "noise": 1},
        },
        varies=("suite",),
    ),
    Case("vlamergebench/SO101-Twin-v0", {"task": "push_cube"}),
    Case(
        "vlamergebench/SO101-Real-v0",
        {"task": "push_cube"},
        hardware="drives a physical SO-101 arm through LeRobot's SO101Follower on a serial port",
    ),
    Case("vlamergebench/AlohaTransferCube-v0", {"task": "transfer_cube"}),
    Case("vlamergebench/AlohaInsertion-v0", {"task": "insertion"}),
    Case("vlamergebench/RoboTwin-Clean-handover_block-v0", varies=("task", "domain")),
)


def _represented(case: Case) -> set[str]:
    """The registered ids the case's checks stand for: its own and those differing only in ``varies``."""
    spec = gym.spec(case.env_id)
    fixed = {k: v for k, v in spec.kwargs.items() if k not in case.varies}
    return {
        other.id
        for other in (gym.spec(i) for i in contract.registered_ids())
        if other.entry_point == spec.entry_point
        and set(other.kwargs) == set(spec.kwargs)
        and {k: v for k, v in other.kwargs.items() if k not in case.varies} == fixed
    }


def test_every_registered_id_is_checked_or_represented():
    covered = {case.env_id: _represented(case) for case in CASES}
    everything = set(contract.registered_ids())
    assert everything == set().union(*covered.values()), sorted(everything - set().union(*covered.values()))
    assert sum(len(ids) for ids in covered.values()) == len(everything), "an id is represented twice"
    counts = {case_id: len(ids) for case_id, ids in covered.items()}
    assert counts["vlamergebench/LIBERO-Object-v0"] == 21  # 5 LIBERO + 16 LIBERO-PRO suites
    assert counts["vlamergebench/LIBERO-Perturbed-Object-v0"] == 4
    assert counts["vlamergebench/RoboTwin-Clean-handover_block-v0"] == 100  # 50 tasks x 2 domains


def test_every_entry_point_accepts_the_common_make_kwargs_and_renders_chunkably():
    entry_points = {gym.spec(env_id).entry_point for env_id in contract.registered_ids()}
    assert len(entry_points) == 5, entry_points  # LIBERO, perturbed LIBERO, SO-101, ALOHA, RoboTwin
    for entry_point in sorted(entry_points):
        creator = load_env_creator(entry_point)  # imports the family module, builds no simulator
        signature = inspect.signature(creator if inspect.isclass(creator) else creator.__call__)
        named = set(signature.parameters)
        forwards = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        assert "task" in named, entry_point
        assert forwards or set(contract.COMMON_MAKE_KWARGS) <= named, (entry_point, sorted(named))
        if inspect.isclass(creator):  # the perturbed factory's env is a LiberoEnv (checked on the made env)
            assert issubclass(creator, contract.ChunkableRendering), entry_point


def _make(case: Case) -> gym.Env:
    if case.hardware:
        pytest.skip(f"{case.env_id}: {case.hardware}")
    kwargs = {"image_size": IMAGE_SIZE, "camera_rendering": True, "render_mode": "rgb_array"}
    try:
        return gym.make(case.env_id, **kwargs, **case.make_kwargs)
    except gym.error.DependencyNotInstalled as error:  # RoboTwin (GPU + checkout), a missing extra
        pytest.skip(f"{case.env_id} (and the ids it represents): {error}")


def _family_env(env: gym.Env) -> gym.Env:
    """The env as its entry point built it: gymnasium.make's own wrappers peeled off."""
    while isinstance(env, (TimeLimit, OrderEnforcing, PassiveEnvChecker)):
        env = env.env
    return env


@pytest.fixture(scope="module", params=CASES, ids=lambda case: case.env_id.split("/")[1])
def made(request):
    env = _make(request.param)
    yield request.param, env
    env.close()


def test_check_env_and_the_observation_contract(made):
    case, env = made
    family = _family_env(env)
    check_env(family, skip_render_check=True)  # its render check makes one more env per render mode
    env_render_passive_checker(family)  # the same check on this env, made with render_mode="rgb_array"
    assert isinstance(env.unwrapped, contract.ChunkableRendering)

    observation, info = env.reset(seed=0, options={"init_state_id": 1})
    space = env.observation_space
    assert space["instruction"] == contract.instruction_space()
    assert set(contract.INFO_KEYS) <= set(info) and info["init_state_id"] == 1
    assert observation["instruction"] == info["instruction"]
    assert observation["state"].dtype == np.float32 and observation["state"].ndim == 1
    cameras = set(observation) - {"state", "instruction"}
    assert cameras and set(space) == set(observation)
    for key in cameras:
        assert observation[key].shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and observation[key].dtype == np.uint8
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"init_state": 0})
    with pytest.raises(ValueError, match="init_state_id must be an int"):
        env.reset(options={"init_state_id": "1"})


def test_same_seed_and_init_state_give_the_same_episode_in_two_envs(made):
    case, first = made
    second = _make(case)
    try:
        actions = first.action_space
        actions.seed(0)
        steps = [actions.sample() for _ in range(STEPS)]
        results = []
        for env in (first, second):
            trace = [env.reset(seed=5, options={"init_state_id": 2})]
            trace += [env.step(action) for action in steps]
            results.append(trace)
        assert data_equivalence(results[0], results[1], exact=True)
        # other actions from the same start end elsewhere: the comparison above can fail
        second.reset(seed=5, options={"init_state_id": 2})
        actions.seed(1)
        for _ in range(STEPS):
            other = second.step(actions.sample())[0]
        assert not data_equivalence(results[0][-1][0], other, exact=True)
    finally:
        second.close()
