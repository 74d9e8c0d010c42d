"""Episodes -> store: plan the episodes of evaluations, run what is missing, commit each as it ends.

An *evaluation* is one phase of one run by one contender. A *phase* evaluates one model state: the one-shot
protocol has one (admission step T), the continual protocol one per admission step t, over the skills
admitted so far (DESIGN.md "Continual"). Episode k of a task uses init state k and seed
``episode_seed(run seed, skill, k)``, whichever worker runs it and whenever, so a resumed or re-parallelised
run repeats exactly the same episodes.

Resuming: before anything runs, the store is asked which episodes are finished; only the others are planned.

Simulators: a process keeps the simulators it built (a small LRU cache keyed by env id and kwargs) across
work items and evaluations, so a task is built once per process, not once per phase; a simulator that
faulted is closed and rebuilt. Contenders (policies, routers) are cached the same way. Work goes
preferably to the process that already holds the item's simulator.

Parallelism: the *executor* runs the work items and hands each finished record back to this process, which
alone writes the store. ``local`` with ``workers > 1`` starts that many spawned processes
(:mod:`vlamergebench.eval.workers`) for all the evaluations at once, ``workers == 1`` runs in this process;
``ray`` runs ``workers`` Ray actors on a Ray cluster (:mod:`vlamergebench.eval.ray_executor`).

Shards: with ``RunOptions.shard`` only that slice of the episode plan runs (:mod:`vlamergebench.eval.shards`).
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from vlamergebench.eval.policy import PolicySourceFactory, RouterFactory, check_policy_source, check_router
from vlamergebench.eval.provenance import canonical_json, episode_seed, git_revision, package_versions
from vlamergebench.eval.rollout import EpisodeOutcome, rollout, rollout_batch
from vlamergebench.eval.shards import Shard, plan_document, record_shard, shard_pairs
from vlamergebench.eval.store import EpisodeRecord, ResultsStore, RunRecord

logger = logging.getLogger(__name__)

# Engines that run work items; the process calling run_evaluations writes the store under every one.
EXECUTORS = ("local", "ray")


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
    """

    source_factory: PolicySourceFactory
    router_factory: RouterFactory | None = None

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
        executor: One of :data:`EXECUTORS`.
        ray_address: Address of the Ray cluster to join (``ray``); None: ``RAY_ADDRESS``, else a local one.
        shard: Run only this slice of the episode plan; None runs all of it.
        batch_envs: Simulators a worker steps side by side, with one policy query per chunk for all of them
            (policies with ``predict_batch``; others run one episode at a time).
    """

    workers: int = 1
    max_steps: int | None = None
    threads_per_worker: int = 1
    progress: bool = True
    envs_per_worker: int = 2
    contenders_per_worker: int = 2
    executor: str = "local"
    ray_address: str | None = None
    shard: Shard | None = None
    batch_envs: int = 1


@dataclass(frozen=True)
class Evaluation:
    """One phase of one run, by one contender."""

    run: RunRecord
    phase: Phase
    contender: Contender

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
    """Everything a process needs besides the env and the contender to produce one stored row."""

    run_id: str
    run_seed: int
    admission_step: int
    max_steps: int | None
    versions: Mapping[str, str]
    git_rev: str


@dataclass(frozen=True)
class WorkItem:
    """Episodes of one unit that one simulator runs in order, for one evaluation."""

    unit: TaskUnit
    episode_indices: tuple[int, ...]
    job: EpisodeJob
    contender: Contender


@dataclass(frozen=True)
class PhaseSummary:
    """Counts over one evaluation's episodes, resumed episodes included."""

    run_id: str
    admission_step: int
    episodes: int
    successes: int
    errors: int
    ran: int
    resumed: int


def plan(
    evaluation: Evaluation,
    job: EpisodeJob,
    finished: Mapping[tuple[Any, ...], Any],
    workers: int,
    keep: set[tuple[Any, ...]] | None = None,
) -> list[WorkItem]:
    """Work items of the episodes of ``evaluation`` not in ``finished`` (and in ``keep``, when given).

    A unit is split into contiguous slices of episodes when there are more workers than units with pending
    episodes, so that every worker has something to do.
    """
    run_id, phase = evaluation.run.run_id, evaluation.phase
    pending = []
    for unit in phase.units:
        indices = tuple(
            k
            for k in range(phase.episodes_per_task)
            if (run_id, phase.admission_step, unit.skill, unit.env_id, unit.variant, unit.task, k)
            not in finished
            and (keep is None or ((unit.skill, unit.env_id, unit.variant, unit.task), k) in keep)
        )
        if indices:
            pending.append((unit, indices))
    slices_per_unit = max(1, math.ceil(workers / max(1, len(pending))))
    items = []
    for unit, indices in pending:
        size = math.ceil(len(indices) / min(slices_per_unit, len(indices)))
        items += [
            WorkItem(unit, indices[i : i + size], job, evaluation.contender)
            for i in range(0, len(indices), size)
        ]
    return items


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
        out = rollout(env, source, router, skill=unit.skill, seed=seed, init_state_id=k, max_steps=max_steps)
        yield "episode", episode_record(item, k, seed, out, os.getpid())
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
        outcomes = rollout_batch(envs, source, router, skill=unit.skill, seeds=seeds, init_state_ids=group,
                                 max_steps=max_steps)  # fmt: skip
        for slot, (k, seed, out) in enumerate(zip(group, seeds, outcomes, strict=True)):
            yield "episode", episode_record(item, k, seed, out, os.getpid())
            if out.error is not None:
                resources.discard_env(unit, slot)


def episode_record(item: WorkItem, k: int, seed: int, out: EpisodeOutcome, pid: int) -> EpisodeRecord:
    """The stored row of episode ``k`` of ``item``."""
    unit, job = item.unit, item.job
    return EpisodeRecord(
        run_id=job.run_id, admission_step=job.admission_step, skill=unit.skill, suite=unit.suite,
        task=unit.task, env_id=unit.env_id, env_kwargs=unit.env_kwargs, variant=unit.variant,
        perturbation_axis=unit.perturbation_axis, perturbation_level=unit.perturbation_level,
        episode_index=k, init_state_id=k, seed=seed, routed_skill=out.routed_skill, routing_s=out.routing_s,
        success=out.success, steps=out.steps, wall_s=out.wall_s, error=out.error, instruction=out.instruction,
        versions=job.versions, git_rev=job.git_rev, worker_pid=pid,
    )  # fmt: skip


class _Progress:
    """The progress bar: episodes done, running success (resumed episodes included) and tqdm's ETA."""

    def __init__(self, total: int, done: int, successes: int, errors: int, label: str, enabled: bool) -> None:
        self.successes, self.errors = successes, errors
        self.bar = tqdm(
            total=total, initial=done, desc=label, unit="ep", disable=not enabled, dynamic_ncols=True
        )
        self._show()

    def _show(self) -> None:
        done = self.bar.n
        rate = f"{100 * self.successes / done:.0f}%" if done else "-"
        self.bar.set_postfix_str(f"success {self.successes}/{done} ({rate}), errors {self.errors}")

    def add(self, record: EpisodeRecord) -> None:
        self.successes += int(record.success)
        self.errors += int(record.error is not None)
        self.bar.update(1)
        self._show()


def _check(evaluations: Sequence[Evaluation], options: RunOptions) -> None:
    if options.workers < 1:
        raise ValueError(f"RunOptions.workers must be >= 1, got {options.workers}")
    if options.batch_envs < 1:
        raise ValueError(f"RunOptions.batch_envs must be >= 1, got {options.batch_envs}")
    if options.executor not in EXECUTORS:
        raise ValueError(f"RunOptions.executor must be one of {EXECUTORS}, got {options.executor!r}")
    seen = set()
    for evaluation in evaluations:
        run, phase = evaluation.run, evaluation.phase
        unknown = sorted({unit.skill for unit in phase.units} - set(run.skills))
        if unknown:
            raise ValueError(
                f"phase units name skills {unknown} that run {run.run_id} does not have: {run.skills}"
            )
        if (run.run_id, phase.admission_step) in seen:
            raise ValueError(f"run {run.run_id} step {phase.admission_step} is evaluated twice in one call")
        seen.add((run.run_id, phase.admission_step))


def run_evaluations(
    store: ResultsStore,
    evaluations: Sequence[Evaluation],
    options: RunOptions | None = None,
    label: str = "eval",
) -> list[PhaseSummary]:
    """Run every missing episode of ``evaluations`` and commit each to ``store`` as it ends.

    Returns:
        Per evaluation, counts over its episodes, those finished in earlier (killed) invocations included.
    """
    options = options or RunOptions()
    _check(evaluations, options)
    for evaluation in evaluations:
        store.register_run(evaluation.run)
    versions, git_rev = package_versions(), git_revision()
    keep = None
    if options.shard is not None:
        episode_plan = plan_document(evaluations)
        keep = shard_pairs(episode_plan, options.shard)
        record_shard(store.path, episode_plan, options.shard)
    counts: dict[tuple[str, int], dict[str, int]] = {}
    items, total, resumed = [], 0, []
    for evaluation in evaluations:
        run, phase = evaluation.run, evaluation.phase
        finished = store.finished_episodes(run.run_id)
        planned = [key for key in evaluation.episode_keys() if keep is None or (key[2:6], key[6]) in keep]
        mine = [finished[key] for key in planned if key in finished]
        resumed += mine
        counts[(run.run_id, phase.admission_step)] = {
            "episodes": len(mine), "successes": sum(ok for ok, _ in mine),
            "errors": sum(failed for _, failed in mine), "ran": 0, "resumed": len(mine),
        }  # fmt: skip
        total += len(planned)
        job = EpisodeJob(run.run_id, run.run_seed, phase.admission_step, options.max_steps, versions, git_rev)
        items += plan(evaluation, job, finished, options.workers, keep)
    progress = _Progress(total, len(resumed), sum(ok for ok, _ in resumed), sum(f for _, f in resumed), label,
                         options.progress)  # fmt: skip

    def commit(record: EpisodeRecord) -> None:
        if not store.add_episode(record):  # only if two invocations share one store at once: first row stands
            logger.warning("episode %s was already stored; kept the stored row", record.key)
            return
        progress.add(record)
        count = counts[(record.run_id, record.admission_step)]
        count["episodes"] += 1
        count["ran"] += 1
        count["successes"] += int(record.success)
        count["errors"] += int(record.error is not None)

    try:
        if items:
            execute(items, options, commit)
    finally:
        progress.bar.close()
    return [PhaseSummary(run_id, step, **count) for (run_id, step), count in counts.items()]


def run_inline(
    items: Sequence[WorkItem], options: RunOptions, commit: Callable[[EpisodeRecord], None]
) -> None:
    """The in-process executor: run ``items`` here, one after another."""
    resources = worker_resources(options)
    try:  # one simulator serves every evaluation of its task before the next is built
        for item in sorted(items, key=lambda item: item.unit.env_key):
            for kind, payload in run_item(item, resources, options.batch_envs):
                if kind == "episode":
                    commit(payload)
    finally:
        resources.close()


def execute(items: Sequence[WorkItem], options: RunOptions, commit: Callable[[EpisodeRecord], None]) -> None:
    """Run ``items`` on the executor ``options`` names; ``commit`` is called in this process per episode."""
    if options.executor == "ray":
        from vlamergebench.eval.ray_executor import run_on_ray

        run_on_ray(items, options, commit)
    elif options.workers == 1:
        run_inline(items, options, commit)
    else:
        from vlamergebench.eval.workers import run_in_workers

        run_in_workers(items, options, commit)


def run_phase(
    store: ResultsStore, run: RunRecord, phase: Phase, contender: Contender, options: RunOptions | None = None
) -> PhaseSummary:
    """Run one evaluation (see :func:`run_evaluations`)."""
    label = f"{run.method} [{run.routing_mode}] step {phase.admission_step}"
    return run_evaluations(store, [Evaluation(run, phase, contender)], options, label)[0]
