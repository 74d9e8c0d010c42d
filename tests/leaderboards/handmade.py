"""Hand-made results: a real store with hand-chosen outcomes, so that leaderboard numbers can be checked.

Entries (skills a1, a2 in suite A and b1 in suite B; 4 episodes per task):
- ties, oracle, one-shot: a1 3/4, a2 4/4, b1 2/4 -> suite A 0.875, B 0.5, overall 0.6875; 300 of 900 bytes.
- ties, own router: a1 2/4, a2 4/4, b1 1/4 (overall 0.5); one a1 episode routed to a2, all else right.
- carve, continual, oracle: R = [[1], [.75, 1], [.5, .75, 1]] -> BWT -0.375, forgetting (0.5, 0.25);
  storage at step 3: 450 bytes.
- base, oracle, one-shot: every task 0/4 (no storage reported).
- ta, oracle, one-shot: every task 1/4, plus perturbed episodes (light level 1: 2/4, camera level 2: 0/4);
  storage 100 bytes (a cheap, bad method: on the Pareto front by storage).
"""

from __future__ import annotations

import dataclasses

from vlamergebench.eval.store import EpisodeRecord, RunRecord, StorageRecord
from vlamergebench.provenance import episode_seed

SKILLS = ("a1", "a2", "b1")
SUITE = {"a1": "A", "a2": "A", "b1": "B"}


def make_run(method, protocol="one_shot", routing_mode="oracle", router=None):
    return RunRecord.create(
        method=method,
        method_config={"method": method},
        expert_set_id="set0",
        skills=SKILLS,
        protocol=protocol,
        routing_mode=routing_mode,
        router=router,
        run_seed=0,
    )


def make_episodes(run, step, skill, wins, total=4, routed=None, variant="", axis=None, level=None):
    routed = routed or [skill] * total
    for k in range(total):
        yield EpisodeRecord(
            run_id=run.run_id,
            admission_step=step,
            skill=skill,
            suite=SUITE[skill],
            task=skill,
            env_id="vlamergebench/LIBERO-Test-v0",
            episode_index=k,
            init_state_id=k,
            seed=episode_seed(0, skill, k),
            success=k < wins,
            steps=100,
            wall_s=1.0,
            versions={"mujoco": "3.17.0", "torch": "2.13.0"},
            git_rev="0123abc",
            variant=variant,
            perturbation_axis=axis,
            perturbation_level=level,
            routed_skill=routed[k],
            instruction=f"do <{skill}> & more",
        )


def fill_store(store):
    """Write the entries of the module docstring into ``store``."""
    ties = make_run("ties")
    routed = make_run("ties", routing_mode="method", router="ties_router")
    carve = make_run("carve", protocol="continual")
    ta = make_run("ta")
    base = make_run("base")
    for run in (ties, routed, carve, ta, base):
        store.register_run(run)
    rows = []
    for skill, wins in zip(SKILLS, (3, 4, 2), strict=True):
        rows += make_episodes(ties, 3, skill, wins)
    for skill, wins in zip(SKILLS, (2, 4, 1), strict=True):
        routing = ["a1", "a2", "a1", "a1"] if skill == "a1" else None
        rows += make_episodes(routed, 3, skill, wins, routed=routing)
    r_matrix = [[1.0], [0.75, 1.0], [0.5, 0.75, 1.0]]
    for step, row in enumerate(r_matrix, start=1):
        for skill, rate in zip(SKILLS, row, strict=False):
            rows += make_episodes(carve, step, skill, int(rate * 4))
    for skill in SKILLS:
        rows += make_episodes(ta, 3, skill, 1)
        rows += make_episodes(base, 3, skill, 0)
    rows += make_episodes(ta, 3, "a1", 2, variant="light-1", axis="light", level="1")
    rows += make_episodes(ta, 3, "a1", 0, variant="camera-2", axis="camera", level="2")
    for record in rows:
        assert store.add_episode(record)
    for run, total in ((ties, 300), (routed, 300), (ta, 100)):
        store.add_storage(
            StorageRecord(
                run.run_id,
                3,
                total,
                900,
                600,
                parameters=total // 2,
                breakdown={"base": 50, "rest": total - 50},
            )
        )
    for step, total in ((1, 250), (2, 350), (3, 450)):
        store.add_storage(StorageRecord(carve.run_id, step, total, 900, 600))
    return {"ties": ties, "routed": routed, "carve": carve, "ta": ta, "base": base}


def add_recorded_episode(store, run, skill, k, colour, success=True, frames=4, side=32):
    """Store episode ``k`` of ``skill`` with a real MP4 (``frames`` frames of two ``side``-px cameras)."""
    import numpy as np

    from vlamergebench.eval.video import FrameRecorder, save_video

    recorder = FrameRecorder()
    for i in range(frames):
        camera = np.full((side, side, 3), colour, np.uint8)
        camera[: side // 4, : side // 4] = 255 * (i % 2)  # a corner that blinks: frames differ
        recorder.add({"agentview_image": camera, "wrist_image": camera[::-1].copy()})
    (record,) = make_episodes(run, len(SKILLS), skill, int(success), total=1)
    record = dataclasses.replace(record, episode_index=k, init_state_id=k, seed=episode_seed(0, skill, k))
    video = save_video(store.path.parent, record.key, recorder.encode())
    assert store.add_episode(record, video=video)
    return video
