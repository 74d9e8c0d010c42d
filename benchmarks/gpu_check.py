"""GPU check: the reference preset (random weights) on CUDA, alone and through the batched rollout path.

1. The policy alone: ``VLAPolicy.predict_batch`` on K LIBERO-shaped observations (two 224 px cameras, the
   8-D state, an instruction) for each K: queries (observations) per second and peak GPU memory.
2. The evaluation's own path: ``run_phase`` on real LIBERO (LIBERO-Object task 0 by default) with
   ``batch_envs = K`` (K simulators stepped side by side, one policy query per chunk for all of them), a
   few episodes with a step cap, in this process: episodes per minute, the policy's queries per second
   within the rollouts, the share of the time spent in the policy, and peak GPU memory.

The weights are random (timing only) and the tokenizer is the offline hashed-word one (Qwen's tokenizer files
are not needed for timing). On a machine whose torch sees no CUDA GPU the script says so in one line and
exits with status 1; nothing in the test suite depends on it.

    MUJOCO_GL=egl python benchmarks/gpu_check.py --batches 1,4,8 --episodes 8 --max-steps 40
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlamergebench.eval.policy import SingleSkillSource
from vlamergebench.eval.runner import run_phase
from vlamergebench.eval.store import ResultsStore, RunRecord
from vlamergebench.eval.work import Contender, Phase, RunOptions, TaskUnit
from vlamergebench.policies.checkpoint import NormStats
from vlamergebench.policies.model import build_model
from vlamergebench.policies.policy import VLAPolicy
from vlamergebench.policies.registry import make_config
from vlamergebench.policies.tokenizer import HashedWordTokenizer

SKILL = "object_0"
STATS = NormStats((-1.0,) * 7, (1.0,) * 7, (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)
POLICY_TIME = {"calls": 0, "queries": 0, "seconds": 0.0}  # filled by TimedPolicy in this process


class TimedPolicy:
    """A policy that counts and times its queries (CUDA synchronised, so the time is the GPU's too)."""

    def __init__(self, policy: VLAPolicy) -> None:
        self.policy = policy

    def reset(self) -> None:
        """Start an episode."""
        self.policy.reset()

    def predict(self, observation: dict) -> np.ndarray:
        """One action chunk."""
        return self.predict_batch([observation])[0]

    def predict_batch(self, observations: list[dict]) -> np.ndarray:
        """One action chunk per observation, in one query."""
        torch.cuda.synchronize()
        start = time.perf_counter()
        actions = self.policy.predict_batch(observations)
        torch.cuda.synchronize()
        POLICY_TIME["seconds"] += time.perf_counter() - start
        POLICY_TIME["calls"] += 1
        POLICY_TIME["queries"] += len(observations)
        return actions


@functools.cache
def reference_policy(dtype: str) -> VLAPolicy:
    """The reference preset with random weights on ``cuda`` (built once)."""
    config = make_config("reference")
    torch.manual_seed(0)
    model = build_model(config, 0)
    return VLAPolicy(
        model, STATS, HashedWordTokenizer(config.llm.vocab_size), dtype=getattr(torch, dtype), device="cuda"
    )


def timed_source(dtype: str) -> SingleSkillSource:
    """The rollout's contender: the reference policy, timed."""
    return SingleSkillSource(TimedPolicy(reference_policy(dtype)), [SKILL])


def _observations(count: int, size: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "agentview_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            "state": rng.uniform(-0.5, 0.5, 8).astype(np.float32),
            "instruction": "pick up the alphabet soup and place it in the basket",
        }
        for _ in range(count)
    ]


def _memory() -> str:
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    return f"peak allocated {peak:.2f} GiB, peak reserved {reserved:.2f} GiB"


def policy_alone(batches: list[int], dtype: str, repeats: int) -> None:
    policy = reference_policy(dtype)
    size = policy.config.vision.image_size
    for k in batches:
        observations = _observations(k, size)
        policy.predict_batch(observations)  # warm-up (kernels, allocator)
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            policy.predict_batch(observations)
        torch.cuda.synchronize()
        rate = k * repeats / (time.perf_counter() - start)
        print(f"  K={k:3d}: {rate:8.2f} queries/s ({_memory()})", flush=True)


def rollout_path(batch: int, episodes: int, max_steps: int, task: int, dtype: str) -> None:
    size = reference_policy(dtype).config.vision.image_size
    unit = TaskUnit(SKILL, "libero_object", f"task_{task}", "vlamergebench/LIBERO-Object-v0",
                    {"task": task, "image_size": size})  # fmt: skip
    run = RunRecord.create(method="gpu-check", method_config={}, expert_set_id="random", skills=[SKILL],
                           protocol="one_shot", routing_mode="oracle", router=None, run_seed=0)  # fmt: skip
    POLICY_TIME.update(calls=0, queries=0, seconds=0.0)
    torch.cuda.reset_peak_memory_stats()
    options = RunOptions(max_steps=max_steps, progress=False, batch_envs=batch, workers=1, device="cuda")
    with tempfile.TemporaryDirectory() as where, ResultsStore.open(Path(where)) as store:
        started = time.perf_counter()
        summary = run_phase(store, run, Phase(1, (unit,), episodes),
                            Contender(functools.partial(timed_source, dtype)), options)  # fmt: skip
        elapsed = time.perf_counter() - started
        errors = store.episodes_frame()["error"].dropna().tolist()
    if errors:
        print(f"  K={batch}: {len(errors)} episode(s) ended in an error, e.g. {errors[0].splitlines()[0]}")
    qps = POLICY_TIME["queries"] / max(POLICY_TIME["seconds"], 1e-9)
    print(
        f"  K={batch:3d}: {60 * summary.ran / elapsed:6.2f} episodes/min, policy {qps:7.2f} queries/s in "
        f"{POLICY_TIME['calls']} calls ({100 * POLICY_TIME['seconds'] / elapsed:.0f}% of the time), "
        f"{_memory()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="1,4,8", help="comma-separated K (observations per query)")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--repeats", type=int, default=5, help="timed queries per K, policy alone")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per K on the rollout path")
    parser.add_argument("--max-steps", type=int, default=40, help="step cap per episode")
    parser.add_argument("--task", type=int, default=0, help="LIBERO-Object task id")
    parser.add_argument("--skip-rollouts", action="store_true", help="time the policy alone")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU here; run it on a machine with one")
        sys.exit(1)
    batches = [int(k) for k in args.batches.split(",")]
    name = torch.cuda.get_device_name(0)
    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name} ({total:.0f} GiB), {args.dtype}")
    print("reference preset (random weights), the policy alone:")
    policy_alone(batches, args.dtype, args.repeats)
    if not args.skip_rollouts:
        print(f"through run_phase on LIBERO-Object task {args.task}, {args.episodes} episodes, "
              f"{args.max_steps} steps each, batch_envs = K:")  # fmt: skip
        for k in batches:
            rollout_path(k, args.episodes, args.max_steps, args.task, args.dtype)


if __name__ == "__main__":
    main()
