"""Success of a contender on each (skill, task) of an expert set: the acceptance check of a new expert set.

``build-default-experts`` passes :func:`success_by_task` to the expert-set room, which does not import
evaluation (the arrows run cli -> eval and cli -> experts, never experts -> eval).
"""

from __future__ import annotations

import os
from pathlib import Path

from vlamergebench.eval.run import RunConfig, run_command
from vlamergebench.eval.store import ResultsStore


def success_by_task(
    method: str,
    experts: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str],
    episodes: int,
    workers: int = 2,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict[tuple[str, str], float]:
    """Run ``method`` (oracle routing) on every task of ``experts``; ``{(skill, task): success rate}``.

    Episodes use init states 0 .. episodes-1 and are stored in ``out/<method>`` (resumable). Episodes that
    ended in an infrastructure error are left out of the rate. Only this run's episodes count: the store
    also keeps the runs of earlier builds (other expert sets), which must not be pooled into this one's rate.
    """
    store_dir = Path(out) / method
    config = RunConfig(
        method=method,
        experts=str(experts),
        episodes_per_task=episodes,
        out=str(store_dir),
        workers=workers,
        max_steps=max_steps,
        progress=progress,
    )
    run_ids = {phase.run_id for phase in run_command(config)}
    with ResultsStore.open(store_dir, readonly=True) as store:
        frame = store.episodes_frame()
    frame = frame[frame["run_id"].isin(run_ids) & frame["error"].isna()]
    rates = frame.groupby(["skill", "task"], sort=False)["success"].mean()
    return {(str(skill), str(task)): float(rate) for (skill, task), rate in rates.items()}
