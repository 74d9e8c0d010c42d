"""The Ray executor: episodes run on Ray actors anywhere on a Ray cluster; this process writes the store.

Each actor is a simulator worker like a local worker process: it keeps the simulators and contenders it built
(the runner's :class:`~vlamergebench.eval.runner.Resources`), so a task's simulator and a merged model are
built once per actor and reused across episodes. The driver hands an actor one episode at a time (one batch
with ``batch_envs > 1``) and prefers the actor that already holds the episode's simulator, so it always
knows which episode each actor has in flight; the finished :class:`~vlamergebench.eval.store.EpisodeRecord`
comes back as the call's result and the driver commits it (the store's guarantees are unchanged: every
episode written as it ends, resume by key, nothing lost or doubled).

An actor that dies (its node lost, the OOM killer, a segfault in the simulator) costs only its in-flight
episode: a fresh actor replaces it and the episode is tried again, up to :data:`ATTEMPTS` times in all; an
episode that kills every attempt is stored as an infrastructure error (never a policy failure), which a
resume runs again. An exception raised by the policy or a broken contract stops the run, as with local
workers. Contenders are built from their factories inside each actor, so a merged model reaches the actors
by its path: on a multi-node cluster the output directory must be on a shared file system (docs/scaling.md).

Ray is an optional dependency (``pip install 'vlamergebench[ray]'``); it is imported only here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlamergebench.eval.rollout import EpisodeOutcome
from vlamergebench.eval.store import INFRASTRUCTURE_ERROR, EpisodeRecord
from vlamergebench.eval.work import RunOptions, WorkItem, episode_record, run_item, worker_resources
from vlamergebench.eval.workers import WorkerError
from vlamergebench.provenance import episode_seed

logger = logging.getLogger(__name__)

ATTEMPTS = 3  # per episode, across actors that die running it


class EpisodeActor:
    """Runs episodes with the simulators and contenders it keeps; wrapped by ``ray.remote`` at run time."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.resources = worker_resources(options)

    def run(self, item: WorkItem) -> list[EpisodeRecord]:
        """The records of the episodes of ``item`` (one, or one batch)."""
        import sys

        records = []
        for kind, payload in run_item(item, self.resources, self.options.batch_envs):
            if "torch" in sys.modules:  # contenders import torch; keep it to the actor's share of cores
                sys.modules["torch"].set_num_threads(self.options.threads_per_worker)
            if kind == "episode":
                records.append(payload)
        return records


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise WorkerError(
            "--executor ray needs Ray: pip install 'vlamergebench[ray]' (with torch==2.13.0 kept)"
        ) from None
    return ray


def connect(address: str | None) -> Any:
    """Ray, initialised: an already initialised session, else ``address``, ``RAY_ADDRESS``, or a local one."""
    ray = _ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
    return ray


@dataclass
class _Actor:
    handle: Any
    env_key: str | None = None
    contender_key: str | None = None
    finished: int = 0


def _infrastructure_record(item: WorkItem, k: int, cause: str) -> EpisodeRecord:
    seed = episode_seed(item.job.run_seed, item.unit.skill, k)
    error = (
        f"{INFRASTRUCTURE_ERROR}the Ray actor died in each of {ATTEMPTS} attempts at this episode ({cause})"
    )
    return episode_record(item, k, seed, EpisodeOutcome(False, 0, 0.0, None, 0.0, None, error), 0)


def _take(pending: deque[tuple[WorkItem, int]], actor: _Actor) -> tuple[WorkItem, int] | None:
    """The pending episode that best reuses what ``actor`` holds.

    Preference: the same simulator and contender, then the same simulator, then the oldest.
    """
    if not pending:
        return None
    for same_contender in (True, False):
        for entry in pending:
            item = entry[0]
            if item.unit.env_key == actor.env_key and (
                not same_contender or item.contender.key == actor.contender_key
            ):
                pending.remove(entry)
                return entry
    return pending.popleft()


def run_on_ray(
    items: Sequence[WorkItem], options: RunOptions, commit: Callable[[EpisodeRecord], None]
) -> None:
    """Run ``items`` on ``options.workers`` Ray actors; ``commit`` is called here, once per episode."""
    ray = connect(options.ray_address)
    remote = ray.remote(num_cpus=options.threads_per_worker, max_restarts=0, max_task_retries=0)(EpisodeActor)
    ordered = sorted(items, key=lambda item: (item.unit.env_key, item.contender.key))
    size = options.batch_envs
    pending: deque[tuple[WorkItem, int]] = deque(
        (dataclasses.replace(item, episode_indices=item.episode_indices[i : i + size]), 1)
        for item in ordered
        for i in range(0, len(item.episode_indices), size)
    )
    actors = [_Actor(remote.remote(options)) for _ in range(min(options.workers, len(pending)))]
    idle = deque(actors)
    in_flight: dict[Any, tuple[_Actor, WorkItem, int]] = {}
    finished = 0
    try:
        while pending or in_flight:
            while idle and pending:
                actor = idle.popleft()
                item, attempt = _take(pending, actor)
                actor.env_key, actor.contender_key = item.unit.env_key, item.contender.key
                in_flight[actor.handle.run.remote(item)] = (actor, item, attempt)
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, item, attempt = in_flight.pop(ref)
            try:
                records = ray.get(ref)
            except ray.exceptions.RayActorError as error:  # the actor died: replace it, retry the episode
                cause = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                if actor.finished == 0 and finished == 0 and attempt >= ATTEMPTS:
                    raise WorkerError(f"every Ray actor died before finishing an episode: {error}") from None
                logger.warning("Ray actor died during episode(s) %s of %s (%s)", item.episode_indices,
                               item.unit.task, cause)  # fmt: skip
                if attempt < ATTEMPTS:
                    pending.appendleft((item, attempt + 1))
                else:
                    for k in item.episode_indices:
                        commit(_infrastructure_record(item, k, cause))
                ray.kill(actor.handle)
                replacement = _Actor(remote.remote(options))
                actors[actors.index(actor)] = replacement
                idle.append(replacement)
                continue
            except ray.exceptions.RayTaskError as error:  # raised by the policy, the router or a contract
                raise WorkerError(f"a Ray actor failed:\n{error}") from None
            for record in records:
                commit(record)
            actor.finished += len(records)
            finished += len(records)
            idle.append(actor)
    finally:
        for actor in actors:
            ray.kill(actor.handle)
