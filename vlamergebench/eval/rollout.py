"""One episode: reset to a fixed init state, route once, run action chunks until success or the time limit.

This is the bottom of the evaluation stack (``rollout`` -> ``runner`` -> ``vlamergebench run``, as LeRobot's
``rollout`` -> ``eval_policy`` -> ``eval_main``). It knows the env conventions of docs/formats.md section 1
and the policy/router contract of :mod:`vlamergebench.eval.policy`, nothing of merging or of the store.

Chunked execution: a chunk runs through :class:`~vlamergebench.envs.chunking.ChunkedActions` when the env
supports it, so the cameras render only for the observation the policy reads next; other envs step the chunk
row by row. Steps count primitive env steps either way.

Videos: given a :class:`~vlamergebench.eval.video.FrameRecorder`, an episode hands it every observation the
policy reads, and the last one, so a video costs no extra rendering (:mod:`vlamergebench.eval.video`).

Fault isolation: an exception raised by the *environment* (``reset`` or ``step``: MuJoCo instability, a
robosuite error) ends the episode as a failure whose ``error`` holds the exception and traceback; the caller
records it and goes on. An exception raised by the *policy or router*, or a broken contract (wrong chunk
shape, an unknown routed skill, an env without ``info["is_success"]``), propagates and stops the run: those
are bugs that would otherwise publish a wrong success rate.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym

from vlamergebench.eval.policy import Policy, PolicyContractError, PolicySource, Router, check_action_chunk

if TYPE_CHECKING:
    from vlamergebench.eval.video import FrameRecorder

_ERROR_CHARS = 4000  # keep the head of the message and the innermost frames of a simulator traceback


class EnvContractError(RuntimeError):
    """The environment does not follow docs/formats.md (e.g. no ``info["is_success"]``)."""


@dataclass(frozen=True)
class EpisodeOutcome:
    """What one episode produced.

    Attributes:
        success: ``info["is_success"]`` after the last step (False after a simulator fault).
        steps: Primitive env steps taken after ``reset`` (settle steps, done inside ``reset``, not counted).
        wall_s: Seconds from the ``reset`` call to the end, routing and policy time included.
        routed_skill: The skill whose policy ran; the true skill under oracle routing; None if the env failed
            before the routing call.
        routing_s: Seconds spent in ``Router.route`` (0 under oracle routing).
        instruction: ``info["instruction"]`` at reset, when the env provides it.
        error: ``"<ExceptionType>: <message>"`` and the traceback of a simulator fault, else None.
    """

    success: bool
    steps: int
    wall_s: float
    routed_skill: str | None
    routing_s: float
    instruction: str | None
    error: str | None


def _fault(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    return (
        text
        if len(text) <= _ERROR_CHARS
        else text[: _ERROR_CHARS // 2] + "\n...\n" + text[-_ERROR_CHARS // 2 :]
    )


def _is_success(info: Mapping[str, Any]) -> bool:
    if "is_success" not in info:
        raise EnvContractError(
            f"env info lacks 'is_success' (keys: {sorted(info)}); see docs/formats.md section 1"
        )
    return bool(info["is_success"])


def rollout(
    env: gym.Env,
    source: PolicySource,
    router: Router | None,
    *,
    skill: str,
    seed: int,
    init_state_id: int,
    max_steps: int,
    frames: FrameRecorder | None = None,
) -> EpisodeOutcome:
    """Run one episode of ``skill`` from init state ``init_state_id`` with ``seed``.

    Args:
        env: A Gymnasium env following docs/formats.md section 1, reused across episodes of one task.
        source: Gives the policy of the routed skill.
        router: Chooses the skill from the first observation; None means oracle (the true ``skill``).
        skill: The skill this episode evaluates (the true label for routing accuracy).
        seed: The episode seed, passed to ``reset`` (see ``provenance.episode_seed``).
        init_state_id: The fixed init state, passed as ``options={"init_state_id": ...}``.
        max_steps: Our own cap on primitive steps, in addition to the env's ``TimeLimit``.
        frames: Receives the observations the policy reads, for a video; None records nothing.

    Returns:
        The :class:`EpisodeOutcome`.
    """
    episode = episode_steps(
        env, source, router, skill=skill, seed=seed, init_state_id=init_state_id, max_steps=max_steps,
        frames=frames,
    )  # fmt: skip
    try:
        policy, observation = next(episode)
        while True:
            policy, observation = episode.send(policy.predict(observation))
    except StopIteration as finished:
        return finished.value


def rollout_batch(
    envs: Sequence[gym.Env],
    source: PolicySource,
    router: Router | None,
    *,
    skill: str,
    seeds: Sequence[int],
    init_state_ids: Sequence[int],
    max_steps: int,
    frames: Sequence[FrameRecorder | None] | None = None,
) -> list[EpisodeOutcome]:
    """Run one episode per env at once, querying each policy once per round for all episodes that wait on it.

    Episode i runs on ``envs[i]`` with ``seeds[i]`` and ``init_state_ids[i]``, through the same
    :func:`episode_steps` as :func:`rollout`, so its outcome is the unbatched one as long as the policy's
    ``predict_batch`` row i equals ``predict`` of observation i (docs/formats.md section 5: a batchable policy
    is stateless between chunks). A policy without ``predict_batch`` is asked row by row. An episode's
    ``wall_s`` counts from the start of the batch. ``frames[i]`` records episode i's video (None: none).
    """
    recorders = list(frames) if frames is not None else [None] * len(envs)
    episodes = [
        episode_steps(
            env, source, router, skill=skill, seed=seed, init_state_id=k, max_steps=max_steps, frames=recorder
        )
        for env, seed, k, recorder in zip(envs, seeds, init_state_ids, recorders, strict=True)
    ]
    outcomes: list[EpisodeOutcome | None] = [None] * len(episodes)
    waiting: dict[int, tuple[Policy, Mapping[str, Any]]] = {}

    def advance(i: int, chunk: Any = None, first: bool = False) -> None:
        try:
            waiting[i] = next(episodes[i]) if first else episodes[i].send(chunk)
        except StopIteration as finished:
            outcomes[i] = finished.value

    for i in range(len(episodes)):
        advance(i, first=True)
    while waiting:
        by_policy: dict[int, list[int]] = {}
        for i, (policy, _) in waiting.items():
            by_policy.setdefault(id(policy), []).append(i)
        round_ = {i: waiting.pop(i) for i in list(waiting)}
        for indices in by_policy.values():
            policy = round_[indices[0]][0]
            observations = [round_[i][1] for i in indices]
            if hasattr(policy, "predict_batch"):
                chunks = list(policy.predict_batch(observations))
            else:
                chunks = [policy.predict(observation) for observation in observations]
            for i, chunk in zip(indices, chunks, strict=True):
                advance(i, chunk)
    return [outcome for outcome in outcomes if outcome is not None]


EpisodeSteps = Generator[tuple[Policy, Mapping[str, Any]], Any, EpisodeOutcome]


def episode_steps(
    env: gym.Env,
    source: PolicySource,
    router: Router | None,
    *,
    skill: str,
    seed: int,
    init_state_id: int,
    max_steps: int,
    frames: FrameRecorder | None = None,
) -> EpisodeSteps:
    """One episode as a generator: it yields ``(policy, observation)`` and is sent that policy's chunk for it.

    The caller decides how chunks are computed (:func:`rollout`: one ``predict`` per chunk; a batched
    caller: one ``predict_batch`` for several episodes), so every episode runs the same code either way.
    Arguments are those of :func:`rollout`; the generator returns the :class:`EpisodeOutcome`.
    """
    started = time.perf_counter()
    steps, routed_skill, routing_s, instruction = 0, None, 0.0, None

    def outcome(success: bool, error: str | None = None) -> EpisodeOutcome:
        wall_s = time.perf_counter() - started
        return EpisodeOutcome(success, steps, wall_s, routed_skill, routing_s, instruction, error)

    try:
        observation, info = env.reset(seed=seed, options={"init_state_id": init_state_id})
    except Exception as error:  # a simulator fault: record it, the run goes on
        return outcome(False, _fault(error))
    instruction = info.get("instruction")
    if frames is not None:
        frames.add(observation)

    if router is None:
        routed_skill = skill
    else:
        routing_started = time.perf_counter()
        routed_skill = router.route(observation, true_skill=skill)  # docs/formats.md §5: only oracle reads it
        routing_s = time.perf_counter() - routing_started
        if routed_skill not in source.skills:
            raise PolicyContractError(f"router returned {routed_skill!r}, not one of {list(source.skills)}")
    policy = source.policy(routed_skill)
    policy.reset()
    action_dim = int(env.action_space.shape[-1])
    who = f"policy of skill {routed_skill!r}"

    success = _is_success(info)
    chunked: dict[int, gym.Wrapper] = {}
    dtype = env.action_space.dtype
    while not success and steps < max_steps:
        chunk = check_action_chunk((yield policy, observation), action_dim, who).astype(dtype)
        # The chunk is executed whole, as VLA-Adapter and MergeVLA do on LIBERO; only our cap may cut it.
        chunk = chunk[: max_steps - steps]
        try:
            if supports_chunking(env):
                from vlamergebench.envs.chunking import ChunkedActions

                if len(chunk) not in chunked:
                    chunked[len(chunk)] = ChunkedActions(env, len(chunk))
                observation, _, terminated, truncated, info = chunked[len(chunk)].step(chunk)
                steps += int(info["executed_steps"])
            else:
                for action in chunk:
                    observation, _, terminated, truncated, info = env.step(action)
                    steps += 1
                    if terminated or truncated:
                        break
        except Exception as error:  # a simulator fault
            return outcome(False, _fault(error))
        if frames is not None:
            frames.add(observation)
        success = _is_success(info)
        if terminated or truncated:
            break
    return outcome(success)


def supports_chunking(env: gym.Env) -> bool:
    """Whether ``env`` can run a chunk with the cameras off until its last step (docs/formats.md §1)."""
    return all(hasattr(env.unwrapped, name) for name in ("set_camera_rendering", "render_cameras"))
