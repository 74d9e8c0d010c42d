"""Worker processes of the runner: each builds its own contender and simulators; the parent writes the store.

Protocol (one duplex pipe per worker; pipes write synchronously, so nothing sent is lost if the worker is
killed right after): a worker says ``ready``, the parent answers with a
:class:`~vlamergebench.eval.runner.WorkItem` or None (stop); the worker reports ``start`` before each episode
and ``episode`` with the finished record; ``fatal`` carries the traceback of a contract or policy error (the
run stops); ``exit`` says it stopped cleanly.

Because the parent knows which episode each worker has in flight, a worker that dies outright (a segfault in
the simulator, the OOM killer) costs one episode, recorded as an infrastructure error naming the exit code
(left out of rates, rerun on resume); the rest of its work item goes back to the queue and a replacement
worker starts. Workers are spawned (no fork: MuJoCo's GL
context and torch's threads do not survive a fork) and ask Linux to kill them when the parent dies, so a
killed run leaves no orphans behind.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlamergebench.eval.rollout import EpisodeOutcome
from vlamergebench.eval.store import INFRASTRUCTURE_ERROR, EpisodeRecord
from vlamergebench.eval.work import Resources, RunOptions, WorkItem, episode_record, run_item
from vlamergebench.provenance import episode_seed

_POLL_S = 0.5


class WorkerError(RuntimeError):
    """A worker hit a policy/contract error, or died before it could run any episode."""


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main(worker_id: int, pipe: Any, options: RunOptions, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    os.environ["OMP_NUM_THREADS"] = str(options.threads_per_worker)
    resources = Resources(options.envs_per_worker, options.contenders_per_worker)
    try:
        while True:
            pipe.send(("ready", None))
            item = pipe.recv()
            if item is None:
                break
            for message in run_item(item, resources):
                if "torch" in sys.modules:  # contenders import torch; keep it to the worker's share of cores
                    sys.modules["torch"].set_num_threads(options.threads_per_worker)
                pipe.send(message)
        resources.close()
    except BaseException:
        pipe.send(("fatal", traceback.format_exc()))
    else:
        pipe.send(("exit", None))


@dataclass
class _Handle:
    process: Any
    pipe: Any
    item: WorkItem | None = None
    last: WorkItem | None = None
    in_flight: int | None = None
    reported: set[int] = field(default_factory=set)
    ran_any: bool = False


def _crash_record(item: WorkItem, k: int, exitcode: int | None, pid: int) -> EpisodeRecord:
    seed = episode_seed(item.job.run_seed, item.unit.skill, k)
    error = f"{INFRASTRUCTURE_ERROR}worker process {pid} died (exit code {exitcode}) during this episode"
    return episode_record(item, k, seed, EpisodeOutcome(False, 0, 0.0, None, 0.0, None, error), pid)


def _next_item(pending: deque[WorkItem], last: WorkItem | None) -> WorkItem | None:
    """The pending item that best reuses what the worker holds.

    Preference: the same simulator and contender as ``last``, then the same simulator, then the oldest item.
    """
    if not pending:
        return None
    if last is not None:
        for same_contender in (True, False):
            for item in pending:
                if item.unit.env_key == last.unit.env_key and (
                    not same_contender or item.contender.key == last.contender.key
                ):
                    pending.remove(item)
                    return item
    return pending.popleft()


def run_in_workers(
    items: Sequence[WorkItem], options: RunOptions, commit: Callable[[EpisodeRecord], None]
) -> None:
    """Run ``items`` on ``options.workers`` spawned processes; ``commit`` is called here, once per episode."""
    import multiprocessing
    from multiprocessing.connection import wait

    context = multiprocessing.get_context("spawn")
    pending = deque(items)
    handles: dict[int, _Handle] = {}
    next_id = 0

    def start() -> None:
        nonlocal next_id
        ours, theirs = context.Pipe(duplex=True)
        args = (next_id, theirs, options, os.getpid())
        process = context.Process(target=_worker_main, args=args, name=f"vlamergebench-worker-{next_id}")
        process.daemon = True
        process.start()
        theirs.close()  # the parent keeps only its end, so a dead worker reads as EOF
        handles[next_id] = _Handle(process, ours)
        next_id += 1

    def handle(worker_id: int, kind: str, payload: Any) -> None:
        worker = handles[worker_id]
        if kind == "ready":
            worker.item = _next_item(pending, worker.item or worker.last)
            worker.last = worker.item or worker.last
            worker.reported, worker.in_flight = set(), None
            worker.pipe.send(worker.item)
        elif kind == "start":
            worker.in_flight = payload
        elif kind == "episode":
            commit(payload)
            worker.reported.add(payload.episode_index)
            worker.in_flight, worker.ran_any = None, True
        elif kind == "fatal":
            raise WorkerError(f"worker {worker.process.pid} failed:\n{payload}")
        elif kind == "exit":
            worker.process.join()
            worker.pipe.close()
            del handles[worker_id]

    def drain(worker_id: int) -> None:
        """Handle every message the worker has sent; reap it when its pipe is closed without ``exit``."""
        worker = handles[worker_id]
        while worker_id in handles:
            try:
                if not worker.pipe.poll():
                    return
                message = worker.pipe.recv()
            except (EOFError, OSError):
                worker.process.join()
                reap(worker_id)
                return
            handle(worker_id, *message)

    def reap(worker_id: int) -> None:
        worker = handles.pop(worker_id)
        worker.pipe.close()
        pid, code = worker.process.pid, worker.process.exitcode
        if worker.in_flight is None and not worker.ran_any:
            raise WorkerError(f"worker {pid} died (exit code {code}) before running any episode")
        if worker.item is not None:
            if worker.in_flight is not None:
                commit(_crash_record(worker.item, worker.in_flight, code, pid))
            done = worker.reported | {worker.in_flight}
            rest = tuple(k for k in worker.item.episode_indices if k not in done)
            if rest:
                pending.appendleft(dataclasses.replace(worker.item, episode_indices=rest))
        if pending:
            start()

    for _ in range(min(options.workers, len(items))):
        start()
    try:
        while handles:
            by_pipe = {worker.pipe: worker_id for worker_id, worker in handles.items()}
            for pipe in wait(list(by_pipe)):
                if by_pipe[pipe] in handles:
                    drain(by_pipe[pipe])
    finally:
        for worker in handles.values():
            worker.process.kill()
            worker.process.join()
            worker.pipe.close()
