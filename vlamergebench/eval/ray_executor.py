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
workers.

Contenders are built from their factories inside each actor, from the model directories they name
(:attr:`~vlamergebench.eval.work.Contender.model_dirs`: a merged model, its base checkpoint). An actor that
sees a directory at its path, with the same files (:func:`~vlamergebench.eval.model_files.fingerprint`),
reads it in place: one machine, or a shared file system. An actor that does not (another node, another
working directory for a relative path) answers its first item with the directories it lacks; this process
then puts their files into Ray's object store, once per directory and run, and each such actor writes them
into a local temporary directory once, reads that copy from then on, and deletes it when the run ends.
With ``device`` ``cuda`` each actor asks Ray for its share of the cluster's GPUs.

Ray is an optional dependency (``pip install 'vlamergebench[ray]'``); it is imported only here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlamergebench.eval.model_files import directory_files, fingerprint, forget_copies, use_copy, write_copy
from vlamergebench.eval.rollout import EpisodeOutcome
from vlamergebench.eval.store import INFRASTRUCTURE_ERROR, EpisodeRecord
from vlamergebench.eval.work import RunOptions, WorkItem, episode_record, run_item, worker_resources
from vlamergebench.eval.workers import WorkerError
from vlamergebench.provenance import episode_seed

logger = logging.getLogger(__name__)

ATTEMPTS = 3  # per episode, across actors that die running it


# What this process offers an actor for each model directory of an item: the directory's fingerprint here and,
# once an actor asked for them, its files in the object store (relative path -> object ref).
Offers = dict[str, tuple[str | None, dict[str, Any] | None]]


class EpisodeActor:
    """Runs episodes with the simulators and contenders it keeps; wrapped by ``ray.remote`` at run time."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.resources = worker_resources(options)
        self.ready: set[str] = set()  # model directories readable here, in place or as a local copy

    def _prepare(self, offers: Offers) -> list[str]:
        """Make the offered directories readable here; returns those still needed from the object store."""
        needed = []
        for path, (expected, refs) in offers.items():
            if path in self.ready:
                continue
            if fingerprint(path) == expected:  # the same directory is visible here: read it in place
                self.ready.add(path)
            elif refs is None:
                needed.append(path)
            else:  # fetched one file at a time, so only one file is held in memory
                ray = _ray()
                use_copy(path, write_copy((relative, ray.get(ref)) for relative, ref in refs.items()))
                self.ready.add(path)
        return needed

    def run(self, item: WorkItem, offers: Offers) -> tuple[str, list[Any]]:
        """``("episodes", records)`` of ``item``, or ``("missing", directories)`` to be sent first."""
        import sys

        missing = self._prepare(offers)
        if missing:
            return "missing", missing
        records = []
        for kind, payload in run_item(item, self.resources, self.options.batch_envs):
            if "torch" in sys.modules:  # contenders import torch; keep it to the actor's share of cores
                sys.modules["torch"].set_num_threads(self.options.threads_per_worker)
            if kind == "episode":
                records.append(payload)
        return "episodes", records

    def close(self) -> None:
        """Close the simulators and delete the local copies of model directories."""
        import shutil

        self.resources.close()
        for copy in forget_copies():
            shutil.rmtree(copy, ignore_errors=True)


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


class _ModelShipping:
    """The model directories' fingerprints here and, once asked for, their files in the object store."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.fingerprints: dict[str, str | None] = {}
        self.files: dict[str, dict[str, Any]] = {}

    def offers(self, item: WorkItem) -> Offers:
        """For each model directory of ``item``: its fingerprint and its files, if already put."""
        offers = {}
        for path in item.contender.model_dirs:
            if path not in self.fingerprints:
                self.fingerprints[path] = fingerprint(path)
            offers[path] = (self.fingerprints[path], self.files.get(path))
        return offers

    def put(self, paths: Sequence[str]) -> None:
        """Put the files of ``paths`` into the object store (each directory once)."""
        import numpy as np

        for path in paths:
            if path in self.files:
                continue
            files = {name: Path(path) / name for name in directory_files(path)}
            # uint8 arrays: an actor reads them zero-copy from the object store, and only bytes are stored
            self.files[path] = {name: self.ray.put(np.fromfile(f, np.uint8)) for name, f in files.items()}
            size = sum(file.stat().st_size for file in files.values())
            logger.info("put %s (%d files, %.1f MB) into Ray's object store", path, len(files), size / 1e6)


def _gpus_per_actor(ray: Any, options: RunOptions) -> float:
    if not options.device.startswith("cuda"):
        return 0.0
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if not gpus:
        raise WorkerError(f"--device {options.device} with --executor ray: the Ray cluster has no GPU")
    return min(1.0, gpus / options.workers)


def _close(ray: Any, actors: Sequence[_Actor]) -> None:
    """Ask each actor to delete its model copies (a busy or dead one is just killed), then kill it."""
    closing = [actor.handle.close.remote() for actor in actors]
    _, unfinished = ray.wait(closing, num_returns=len(closing), timeout=30) if closing else ([], [])
    if unfinished:  # the run's outcome stands; a copy left behind is in a temporary directory
        logger.warning("%d Ray actor(s) did not close within 30 s", len(unfinished))
    for actor in actors:
        ray.kill(actor.handle)


def run_on_ray(
    items: Sequence[WorkItem], options: RunOptions, commit: Callable[[EpisodeRecord], None]
) -> None:
    """Run ``items`` on ``options.workers`` Ray actors; ``commit`` is called here, once per episode."""
    ray = connect(options.ray_address)
    remote = ray.remote(
        num_cpus=options.threads_per_worker,
        num_gpus=_gpus_per_actor(ray, options),
        max_restarts=0,
        max_task_retries=0,
    )(EpisodeActor)
    shipping = _ModelShipping(ray)
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
                in_flight[actor.handle.run.remote(item, shipping.offers(item))] = (actor, item, attempt)
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, item, attempt = in_flight.pop(ref)
            try:
                kind, records = ray.get(ref)
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
            if kind == "missing":  # the actor does not see these directories: send them, run the item again
                shipping.put(records)
                in_flight[actor.handle.run.remote(item, shipping.offers(item))] = (actor, item, attempt)
                continue
            for record in records:
                commit(record)
            actor.finished += len(records)
            finished += len(records)
            idle.append(actor)
    finally:
        _close(ray, actors)
