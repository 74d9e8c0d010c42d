"""The work the runner hands out and how one process does it: task units, phases, contenders, work items.

Shared by the runner (which plans and commits) and its worker processes (which run items), so that neither
imports the other's internals. Everything here is picklable: items cross process boundaries by spawn.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vlamergebench.eval.policy import PolicySourceFactory, RouterFactory, check_policy_source, check_router
from vlamergebench.eval.rollout import EpisodeOutcome, rollout, rollout_batch
from vlamergebench.eval.shards import Shard
from vlamergebench.eval.store import EpisodeRecord, RunRecord
from vlamergebench.provenance import canonical_json, episode_seed

if TYPE_CHECKING:
    from vlamergebench.eval.video import FrameRecorder


@dataclass(frozen=True)
class TaskUnit:
    """One evaluated (skill, task, env variant): what an episode row names besides its index.

    Attributes:
        skill: The skill (expert) this task belongs to; the true label for routing.
        suite: Suite name (e.g. ``libero_object``).
        task: Task name, unique within the suite.
        env_id: Gymnasium id (``module:id`` also works, Gymnasium imports the module first).
        env_kwargs: Keyword arguments of ``gymnasium.make`` (the task id, image size, perturbation...).
        variant: Label of a perturbed variant; ``""`` for the unperturbed env.
        perturbation_axis: The perturbation axis of ``variant`` (e.g. ``lighting``), None if unperturbed.
        perturbation_level: Its level, as text (e.g. ``"3"``), None if unperturbed.
    """

    skill: str
    suite: str
    task: str
    env_id: str
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    variant: str = ""
    perturbation_axis: str | None = None
    perturbation_level: str | None = None

    def make_env(self) -> Any:
        """Build the env (registers our ids first; runs inside the worker)."""
        import gymnasium as gym

        import vlamergebench.envs  # noqa: F401  (registers vlamergebench/* ids)

        return gym.make(self.env_id, **dict(self.env_kwargs))

    @property
    def env_key(self) -> str:
        """Identifies the simulator: env id and make kwargs (units differing only in skill share it)."""
        return self.env_id + canonical_json(dict(self.env_kwargs))


@dataclass(frozen=True)
class Phase:
    """The episodes of one evaluation: every unit x episodes ``0 .. episodes_per_task - 1``."""

    admission_step: int
    units: tuple[TaskUnit, ...]
    episodes_per_task: int

    def __post_init__(self) -> None:
        if self.admission_step < 1 or self.episodes_per_task < 1 or not self.units:
            raise ValueError(f"Phase needs admission_step >= 1, episodes_per_task >= 1 and units, got {self}")
        keys = [(u.skill, u.env_id, u.variant, u.task) for u in self.units]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Phase lists a (skill, env_id, variant, task) twice: {keys}")


@dataclass(frozen=True)
class Contender:
    """What is evaluated: picklable factories, called once inside each process that runs its episodes.

    Attributes:
        source_factory: Builds the :class:`~vlamergebench.eval.policy.PolicySource`.
        router_factory: Builds the router; None for oracle routing.
        model_dirs: The directories the factories read (a merged model and its base, a checkpoint...), which
            an executor makes available where the factories run (:mod:`vlamergebench.eval.model_files`).
    """

    source_factory: PolicySourceFactory
    router_factory: RouterFactory | None = None
    model_dirs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Identifies the contender within a process's cache (factories' reprs name their arguments)."""
        return repr((self.source_factory, self.router_factory))


@dataclass(frozen=True)
class RunOptions:
    """How to run (not part of a run's identity).

    Attributes:
        workers: Worker processes (``local``; 1 runs in this process) or Ray actors (``ray``).
        max_steps: Cap on primitive steps per episode; None takes the env spec's ``max_episode_steps``.
        threads_per_worker: torch/BLAS threads in each worker.
        progress: Show the tqdm progress bar.
        envs_per_worker: Simulators a process keeps built (LRU).
        contenders_per_worker: Contenders a process keeps built (LRU).
        retry_errors: Also rerun stored episodes that ended in an error (infrastructure errors always are).
        executor: ``local`` or ``ray`` (the runner's ``EXECUTORS``).
        ray_address: Address of the Ray cluster to join (``ray``); None: ``RAY_ADDRESS``, else a local one.
        shard: Run only this slice of the episode plan; None runs all of it.
        batch_envs: Simulators a worker steps side by side, with one policy query per chunk for all of them
            (policies with ``predict_batch``; others run one episode at a time).
        record_videos: Record a video of episodes ``0 .. record_videos - 1`` of every task unit and phase
            (:mod:`vlamergebench.eval.video`); 0 records none.
        device: The policies' torch device (resolved, never ``auto``); with ``cuda`` the Ray executor gives
            each actor its share of the cluster's GPUs (Ray hides GPUs from actors that ask for none).
    """

    workers: int = 1
    max_steps: int | None = None
    threads_per_worker: int = 1
    progress: bool = True
    envs_per_worker: int = 2
    contenders_per_worker: int = 2
    retry_errors: bool = False
    executor: str = "local"
    ray_address: str | None = None
    shard: Shard | None = None
    batch_envs: int = 1
    record_videos: int = 0
    device: str = "cpu"


@dataclass(frozen=True)
class Evaluation:
    """One phase of one run, by one contender.

    ``code_version`` identifies the code of the method that made the contender (recorded in every episode's
    versions as ``method_code``); a run's stored episodes of another code version are never extended.
    """

    run: RunRecord
    phase: Phase
    contender: Contender
    code_version: str | None = None

    def episode_keys(self) -> list[tuple[Any, ...]]:
        """The episode keys (``EPISODE_KEY`` order) of every episode of the phase."""
        run, phase = self.run, self.phase
        return [
            (run.run_id, phase.admission_step, u.skill, u.env_id, u.variant, u.task, k)
            for u in phase.units
            for k in range(phase.episodes_per_task)
        ]


@dataclass(frozen=True)
class EpisodeJob:
    """Everything a process needs besides the env and the contender to produce one stored row.

    ``record_videos``: episodes ``0 .. record_videos - 1`` carry their encoded video to the runner.
    """

    run_id: str
    run_seed: int
    admission_step: int
    max_steps: int | None
    versions: Mapping[str, str]
    git_rev: str
    record_videos: int = 0

    def recorder(self, episode_index: int) -> FrameRecorder | None:
        """A frame recorder for episode ``episode_index`` if its video is wanted, else None."""
        if episode_index >= self.record_videos:
            return None
        from vlamergebench.eval.video import FrameRecorder

        return FrameRecorder()


@dataclass(frozen=True)
class WorkItem:
    """Episodes of one unit that one simulator runs in order, for one evaluation."""

    unit: TaskUnit
    episode_indices: tuple[int, ...]
    job: EpisodeJob
    contender: Contender


def build_contender(contender: Contender) -> tuple[Any, Any]:
    """Call the factories and check what they return (in whichever process runs episodes)."""
    source = check_policy_source(contender.source_factory())
    router = None if contender.router_factory is None else check_router(contender.router_factory())
    return source, router


class Resources:
    """The simulators and contenders one process keeps built, as small LRU caches.

    Args:
        max_envs: Simulators kept.
        max_contenders: Contenders kept.
    """

    def __init__(self, max_envs: int = 2, max_contenders: int = 2) -> None:
        self.max_envs, self.max_contenders = max_envs, max_contenders
        self._envs: OrderedDict[str, Any] = OrderedDict()
        self._contenders: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def env(self, unit: TaskUnit, slot: int = 0) -> Any:
        """Simulator ``slot`` of ``unit`` (several run side by side when batching), built on first use."""
        key = unit.env_key if slot == 0 else f"{unit.env_key}#{slot}"
        if key in self._envs:
            self._envs.move_to_end(key)
        else:
            self._envs[key] = unit.make_env()
            while len(self._envs) > self.max_envs:
                self._envs.popitem(last=False)[1].close()
        return self._envs[key]

    def discard_env(self, unit: TaskUnit, slot: int = 0) -> None:
        """Close and forget simulator ``slot`` of ``unit`` (after a fault it may be left broken)."""
        env = self._envs.pop(unit.env_key if slot == 0 else f"{unit.env_key}#{slot}", None)
        if env is not None:
            env.close()

    def contender(self, contender: Contender) -> tuple[Any, Any]:
        """``(policy source, router)`` of ``contender``, built on first use."""
        key = contender.key
        if key in self._contenders:
            self._contenders.move_to_end(key)
        else:
            self._contenders[key] = build_contender(contender)
            while len(self._contenders) > self.max_contenders:
                self._contenders.popitem(last=False)
        return self._contenders[key]

    def close(self) -> None:
        """Close every simulator."""
        while self._envs:
            self._envs.popitem()[1].close()


def worker_resources(options: RunOptions) -> Resources:
    """The caches of one worker: room for a batch of simulators besides the usual ones."""
    return Resources(options.envs_per_worker + options.batch_envs - 1, options.contenders_per_worker)


def run_item(item: WorkItem, resources: Resources, batch: int = 1) -> Iterator[tuple[str, Any]]:
    """Run one work item, yielding ``("start", k)``, then ``("episode", record)``, per episode k.

    With ``batch > 1`` and a policy that has ``predict_batch``, episodes run ``batch`` at a time on as many
    simulators, with one policy query per chunk for all of them
    (:func:`~vlamergebench.eval.rollout.rollout_batch`).
    """
    unit, job = item.unit, item.job
    source, router = resources.contender(item.contender)
    if batch > 1 and hasattr(source.policy(unit.skill), "predict_batch"):
        yield from _run_batched(item, resources, source, router, batch)
        return
    for k in item.episode_indices:
        env = resources.env(unit)
        max_steps = job.max_steps or (env.spec.max_episode_steps if env.spec else None)
        if not max_steps:
            raise ValueError(f"{unit.env_id}: no max_episode_steps in its spec; set RunOptions.max_steps")
        yield "start", k
        seed = episode_seed(job.run_seed, unit.skill, k)
        recorder = job.recorder(k)
        out = rollout(env, source, router, skill=unit.skill, seed=seed, init_state_id=k, max_steps=max_steps,
                      frames=recorder)  # fmt: skip
        yield "episode", episode_record(item, k, seed, out, os.getpid(), recorder)
        if out.error is not None:  # the simulator may be left broken: build a fresh one
            resources.discard_env(unit)


def _run_batched(
    item: WorkItem, resources: Resources, source: Any, router: Any, batch: int
) -> Iterator[tuple[str, Any]]:
    unit, job = item.unit, item.job
    for start in range(0, len(item.episode_indices), batch):
        group = item.episode_indices[start : start + batch]
        envs = [resources.env(unit, slot) for slot in range(len(group))]
        max_steps = job.max_steps or (envs[0].spec.max_episode_steps if envs[0].spec else None)
        if not max_steps:
            raise ValueError(f"{unit.env_id}: no max_episode_steps in its spec; set RunOptions.max_steps")
        for k in group:
            yield "start", k
        seeds = [episode_seed(job.run_seed, unit.skill, k) for k in group]
        recorders = [job.recorder(k) for k in group]
        outcomes = rollout_batch(envs, source, router, skill=unit.skill, seeds=seeds, init_state_ids=group,
                                 max_steps=max_steps, frames=recorders)  # fmt: skip
        for slot, (k, seed, out, recorder) in enumerate(zip(group, seeds, outcomes, recorders, strict=True)):
            yield "episode", episode_record(item, k, seed, out, os.getpid(), recorder)
            if out.error is not None:
                resources.discard_env(unit, slot)


def episode_record(
    item: WorkItem, k: int, seed: int, out: EpisodeOutcome, pid: int, frames: FrameRecorder | None = None
) -> EpisodeRecord:
    """The stored row of episode ``k`` of ``item``, with its encoded video when ``frames`` recorded any."""
    unit, job = item.unit, item.job
    video = frames.encode() if frames is not None and frames.frames else None
    return EpisodeRecord(
        run_id=job.run_id, admission_step=job.admission_step, skill=unit.skill, suite=unit.suite,
        task=unit.task, env_id=unit.env_id, env_kwargs=unit.env_kwargs, variant=unit.variant,
        perturbation_axis=unit.perturbation_axis, perturbation_level=unit.perturbation_level,
        episode_index=k, init_state_id=k, seed=seed, routed_skill=out.routed_skill, routing_s=out.routing_s,
        success=out.success, steps=out.steps, wall_s=out.wall_s, error=out.error, instruction=out.instruction,
        versions=job.versions, git_rev=job.git_rev, worker_pid=pid, video=video,
    )  # fmt: skip
