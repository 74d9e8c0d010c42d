"""A real evaluation run on the point env, as a script: ``python point_run.py STORE_DIR EPISODES DELAY_S``.

Used by test_resume.py, which SIGKILLs it mid-way and runs it again.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evalworld

from vlamergebench.eval.runner import run_phase
from vlamergebench.eval.store import ResultsStore, RunRecord
from vlamergebench.eval.work import Contender, Phase, RunOptions, TaskUnit

SKILLS = ("left", "right")

if __name__ == "__main__":
    store_dir, episodes, delay_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    run = RunRecord.create(
        method="controllers",
        method_config={},
        expert_set_id="points",
        skills=SKILLS,
        protocol="one_shot",
        routing_mode="oracle",
        router=None,
        run_seed=7,
    )
    units = tuple(
        TaskUnit(s, "points", s, evalworld.ENV_ID, {"task": s, "step_delay_s": delay_s}) for s in SKILLS
    )
    with ResultsStore.open(store_dir) as store:
        summary = run_phase(
            store,
            run,
            Phase(1, units, episodes),
            Contender(functools.partial(evalworld.Controllers, SKILLS)),
            RunOptions(workers=2),
        )
    print(f"RAN={summary.ran} RESUMED={summary.resumed} EPISODES={summary.episodes}")  # noqa: T201
