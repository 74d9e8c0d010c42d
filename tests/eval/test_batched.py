"""Batched policy inference: a real tiny VLA gives the same actions batched as one by one, and a worker that
steps K simulators with one query per chunk stores the same episodes as one that steps one."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import evalworld  # noqa: E402

from vlamergebench.eval.rollout import rollout, rollout_batch  # noqa: E402
from vlamergebench.eval.runner import run_phase  # noqa: E402
from vlamergebench.eval.store import ResultsStore, RunRecord  # noqa: E402
from vlamergebench.eval.work import Contender, Phase, RunOptions, TaskUnit  # noqa: E402
from vlamergebench.policies.checkpoint import NormStats  # noqa: E402
from vlamergebench.policies.model import build_model  # noqa: E402
from vlamergebench.policies.policy import VLAPolicy  # noqa: E402
from vlamergebench.policies.registry import make_config  # noqa: E402
from vlamergebench.policies.tokenizer import make_tokenizer  # noqa: E402

SKILLS = ("left", "right")
COLUMNS = ["success", "steps", "seed", "init_state_id", "routed_skill", "error"]


def test_tiny_vla_batched_actions_equal_one_by_one():
    config = make_config("tiny")
    stats = NormStats((-1.0,) * 7, (1.0,) * 7, (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)
    tokenizer = make_tokenizer(config.llm.tokenizer, config.llm.vocab_size)
    policy = VLAPolicy(build_model(config, seed=0), stats, tokenizer)
    size, rng = policy.config.vision.image_size, np.random.default_rng(0)
    instructions = [
        "pick up the bowl",
        "put the long black bowl on the plate next to the cookie box",
        "go",
        "x y",
    ]
    observations = [
        {
            "agentview_image": rng.integers(0, 256, (size + 16, size + 16, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "state": rng.normal(size=policy.config.proprio_dim),
            "instruction": text,  # different prompt lengths: the batch is padded, single queries are not
        }
        for text in instructions
    ]
    batched = policy.predict_batch(observations)
    single = np.stack([policy.predict(observation) for observation in observations])
    assert batched.shape == single.shape == (4, policy.config.chunk_size, policy.config.action_dim)
    assert np.allclose(batched, single, atol=1e-5), np.abs(batched - single).max()
    assert not np.allclose(batched[0], batched[1])  # the rows are not one repeated answer


def _store(where, batch_envs, source=evalworld.BatchSeekers, workers=1, record_videos=0):
    run = RunRecord.create(method="controllers", method_config={}, expert_set_id="points", skills=SKILLS,
                           protocol="one_shot", routing_mode="oracle", router=None, run_seed=1)  # fmt: skip
    units = tuple(
        TaskUnit(s, "points", s, evalworld.ENV_ID, {"task": s, "fault_init_states": [5]}) for s in SKILLS
    )
    with ResultsStore.open(where) as store:
        run_phase(store, run, Phase(1, units, 7), Contender(functools.partial(source, SKILLS)),
                  RunOptions(progress=False, batch_envs=batch_envs, workers=workers,
                             record_videos=record_videos))  # fmt: skip
        return store.episodes_frame().set_index(["skill", "episode_index"]).sort_index()


def _videos(where):
    with ResultsStore.open(where, readonly=True) as store:
        return store.videos_frame().set_index(["skill", "episode_index"]).sort_index()


def test_batched_workers_store_the_same_episodes(tmp_path):
    one = _store(tmp_path / "one", 1, record_videos=6)
    videos = _videos(tmp_path / "one")
    for batch_envs, workers in ((4, 1), (3, 2)):
        batched = _store(tmp_path / f"batched{batch_envs}", batch_envs, workers=workers, record_videos=6)
        assert batched[COLUMNS].equals(one[COLUMNS]), batch_envs
        # the same frames recorded, batched or not, in this process or a worker's (x264 with one thread)
        assert _videos(tmp_path / f"batched{batch_envs}")[["frames", "sha256"]].equals(
            videos[["frames", "sha256"]]
        )
    assert len(videos) == 2 * 6 and (videos["frames"] >= 1).all()
    # a frame at reset and one after each chunk of 4 steps (the episode that faulted: up to the fault)
    healthy = one.loc[videos.index].query("error.isna()")
    assert (videos.loc[healthy.index, "frames"] == 1 + -(-healthy["steps"] // 4)).all()
    assert one.loc[(slice(None), 5), "error"].str.contains("simulated instability").all()  # a fault mid-batch
    assert 0 < one["success"].sum() < 12


def test_rollout_batch_queries_the_policy_once_per_round_for_all_waiting_episodes():
    source = evalworld.BatchSeekers(SKILLS)
    envs = [evalworld.PointEnv(task="left") for _ in range(4)]
    outcomes = rollout_batch(envs, source, None, skill="left", seeds=[0, 1, 2, 3],
                             init_state_ids=[0, 1, 5, 12], max_steps=40)  # fmt: skip
    sizes = source.policy("left").batch_sizes
    assert sizes[0] == 4 and sizes == sorted(sizes, reverse=True)  # episodes drop out as they succeed
    assert sum(sizes) == sum(-(-outcome.steps // 4) for outcome in outcomes)  # one row per executed chunk
    for env, seed, k, outcome in zip(envs, [0, 1, 2, 3], [0, 1, 5, 12], outcomes, strict=True):
        alone = rollout(env, evalworld.Controllers(SKILLS), None, skill="left", seed=seed, init_state_id=k,
                        max_steps=40)  # fmt: skip
        assert (outcome.success, outcome.steps, outcome.error) == (alone.success, alone.steps, None)
    assert 0 < sum(outcome.success for outcome in outcomes) < 4
