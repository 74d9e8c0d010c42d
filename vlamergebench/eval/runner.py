"""Episodes -> store: plan the episodes of evaluations, run what is missing, commit each as it ends.

An *evaluation* is one phase of one run by one contender. A *phase* evaluates one model state: the one-shot
protocol has one (admission step T), the continual protocol one per admission step t, over the skills
admitted so far (DESIGN.md "Continual"). Episode k of a task uses init state k and seed
``episode_seed(run seed, skill, k)``, whichever worker runs it and whenever, so a resumed or re-parallelised
run repeats exactly the same episodes.

Resuming: before anything runs, the store is asked which episodes are finished; only the others are planned.
An episode whose worker died is an infrastructure error, not finished: a rerun runs it again.

Simulators: a process keeps the simulators it built (a small LRU cache keyed by env id and kwargs) across
work items and evaluations, so a task is built once per process, not once per phase; a simulator that
faulted is closed and rebuilt. Contenders (policies, routers) are cached the same way. Work goes
preferably to the process that already holds the item's simulator.

Parallelism: the *executor* runs the work items and hands each finished record back to this process, which
alone writes the store. ``local`` with ``workers > 1`` starts that many spawned processes
(:mod:`vlamergebench.eval.workers`) for all the evaluations at once, ``workers == 1`` runs in this process;
``ray`` runs ``workers`` Ray actors on a Ray cluster (:mod:`vlamergebench.eval.ray_executor`).

Shards: with ``RunOptions.shard`` only that slice of the episode plan runs (:mod:`vlamergebench.eval.shards`).
The work types the runner and every executor share live in :mod:`vlamergebench.eval.work`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from vlamergebench.eval.shards import plan_document, record_shard, shard_pairs
from vlamergebench.eval.store import EpisodeRecord, ResultsStore, RunRecord
from vlamergebench.eval.video import require_video_support, save_video
from vlamergebench.eval.work import (
    Contender,
    EpisodeJob,
    Evaluation,
    Phase,
    RunOptions,
    WorkItem,
    run_item,
    worker_resources,
)
from vlamergebench.eval.workers import run_in_workers
from vlamergebench.provenance import git_revision, package_versions

logger = logging.getLogger(__name__)

# Engines that run work items; the process calling run_evaluations writes the store under every one.
EXECUTORS = ("local", "ray")


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
    if options.record_videos < 0:
        raise ValueError(f"RunOptions.record_videos must be >= 0, got {options.record_videos}")
    if options.record_videos:
        require_video_support()
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
        if evaluation.code_version is not None:
            store.check_method_code(run.run_id, evaluation.code_version)
        finished = store.finished_episodes(run.run_id, options.retry_errors)
        planned = [key for key in evaluation.episode_keys() if keep is None or (key[2:6], key[6]) in keep]
        mine = [finished[key] for key in planned if key in finished]
        resumed += mine
        counts[(run.run_id, phase.admission_step)] = {
            "episodes": len(mine), "successes": sum(ok for ok, _ in mine),
            "errors": sum(failed for _, failed in mine), "ran": 0, "resumed": len(mine),
        }  # fmt: skip
        total += len(planned)
        code = {} if evaluation.code_version is None else {"method_code": evaluation.code_version}
        job = EpisodeJob(run.run_id, run.run_seed, phase.admission_step, options.max_steps,
                         {**versions, **code}, git_rev, options.record_videos)  # fmt: skip
        items += plan(evaluation, job, finished, options.workers, keep)
    progress = _Progress(total, len(resumed), sum(ok for ok, _ in resumed), sum(f for _, f in resumed), label,
                         options.progress)  # fmt: skip

    def commit(record: EpisodeRecord) -> None:
        # the file first, then its row with the episode's: a run killed in between rewrites the same path
        video = None if record.video is None else save_video(store.path.parent, record.key, record.video)
        # refused only if two invocations share one store at once: the first row stands
        if not store.add_episode(record, options.retry_errors, video):
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
        run_in_workers(items, options, commit)


def run_phase(
    store: ResultsStore, run: RunRecord, phase: Phase, contender: Contender, options: RunOptions | None = None
) -> PhaseSummary:
    """Run one evaluation (see :func:`run_evaluations`)."""
    label = f"{run.method} [{run.routing_mode}] step {phase.admission_step}"
    return run_evaluations(store, [Evaluation(run, phase, contender)], options, label)[0]
