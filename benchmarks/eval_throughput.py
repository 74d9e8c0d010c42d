"""Evaluation throughput on real LIBERO, side by side in one run, on the same episodes, against the simulator.

Every configuration runs the same episodes (LIBERO-Object task 0 by default, init states 0..E-1, a step cap)
with the same policy (the ``tiny`` preset, random weights: timing only) into a fresh store, and prints
episodes per minute: the local executor at 1 and 2 worker processes, Ray at 1 and 2 actors (a local Ray
cluster, started before the clock: a cluster is started once, not per run), and batched inference at
K = 1, 4, 8 simulators per worker. Times include building simulators and contenders in each worker.

Then one episode in this process, instrumented: where its time goes (reset, physics, rendering, policy, the
rollout's own code; renders are timed where they happen, inside reset and step, so the parts do not
overlap) and the runner + store + IPC share per episode (the steady cost of an episode on one worker, from
the difference between a full and a quarter-length run, minus the rollout's own time), against the
physics-only step rate (the simulator's limit here: steps with the cameras off). The worker's one-off
start-up (imports, simulator and contender builds) is printed apart: it is paid once per worker, not per
episode.

With ``--reference-qps``, the reference preset's shapes (random weights, ~6 GB) answer batches of K = 1 and 8
observations on this CPU, with one intra-op thread and with one per core: queries (observations) per second.

Timings on a shared machine are noisy: the 1-minute load average is printed next to each figure.

    MUJOCO_GL=egl python benchmarks/eval_throughput.py --episodes 8 --max-steps 48 [--reference-qps]
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vlamergebench.eval.policy import SingleSkillSource
from vlamergebench.eval.rollout import rollout
from vlamergebench.eval.runner import run_phase
from vlamergebench.eval.store import ResultsStore, RunRecord
from vlamergebench.eval.work import Contender, Phase, RunOptions, TaskUnit
from vlamergebench.policies.checkpoint import NormStats
from vlamergebench.policies.model import PromptBatch, build_model
from vlamergebench.policies.policy import VLAPolicy
from vlamergebench.policies.registry import make_config
from vlamergebench.policies.tokenizer import HashedWordTokenizer

SKILL = "object_0"
STATS = NormStats((-1.0,) * 7, (1.0,) * 7, (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)


def tiny_source(preset: str = "tiny") -> SingleSkillSource:
    """The timed contender: a random-weight policy of ``preset`` (picklable by name into workers, actors)."""
    config = make_config(preset)
    torch.manual_seed(0)
    policy = VLAPolicy(build_model(config, 0), STATS, HashedWordTokenizer(config.llm.vocab_size))
    return SingleSkillSource(policy, [SKILL])


def _load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _unit(task: int, image_size: int) -> TaskUnit:
    return TaskUnit(SKILL, "libero_object", f"task_{task}", "vlamergebench/LIBERO-Object-v0",
                    {"task": task, "image_size": image_size})  # fmt: skip


def _timed_run(
    where: Path, unit: TaskUnit, episodes: int, max_steps: int, **options
) -> tuple[float, float, float]:
    """(episodes per minute, mean rollout seconds per episode, wall seconds) of one configuration."""
    run = RunRecord.create(method="bench", method_config={}, expert_set_id="random", skills=[SKILL],
                           protocol="one_shot", routing_mode="oracle", router=None, run_seed=0)  # fmt: skip
    started = time.perf_counter()
    with ResultsStore.open(where) as store:
        contender = Contender(functools.partial(tiny_source))
        options = RunOptions(max_steps=max_steps, progress=False, **options)
        summary = run_phase(store, run, Phase(1, (unit,), episodes), contender, options)
        rows = store.episodes_frame()
    elapsed = time.perf_counter() - started
    assert summary.ran == episodes and rows["error"].isna().all(), rows["error"].dropna().tolist()[:1]
    return 60 * episodes / elapsed, float(rows["wall_s"].mean()), elapsed


def breakdown(unit: TaskUnit, max_steps: int) -> dict[str, float]:
    """Seconds of one episode by part, and the physics-only step time.

    Camera rendering happens inside ``reset`` and ``step`` (the env renders when it observes), so every
    render is timed where it happens and taken out of the call around it: the parts do not overlap, and
    "rollout code" (the episode minus the parts) is what the rollout loop itself costs.
    """
    env = unit.make_env()
    source = tiny_source()
    policy = source.policy(SKILL)
    spent = {"reset": 0.0, "step": 0.0, "policy": 0.0}
    rendered = {"reset": 0.0, "step": 0.0, "elsewhere": 0.0}
    physics_only_steps: list[float] = []
    unwrapped = env.unwrapped
    state = {"inside": "elsewhere", "cameras": True}

    def timed(name, function):
        def call(*args, **kwargs):
            state["inside"] = name if name in rendered else state["inside"]
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                spent[name] += elapsed
                if name == "step" and not state["cameras"]:
                    physics_only_steps.append(elapsed)
                state["inside"] = "elsewhere" if name in rendered else state["inside"]

        return call

    def render(_render=unwrapped.render_cameras):
        start = time.perf_counter()
        try:
            return _render()
        finally:
            rendered[state["inside"]] += time.perf_counter() - start

    def cameras(enabled, _set=unwrapped.set_camera_rendering):
        state["cameras"] = bool(enabled)
        return _set(enabled)

    env.reset(seed=0, options={"init_state_id": 0})  # warm-up: first reset compiles and loads
    env.reset = timed("reset", env.reset)
    env.step = timed("step", env.step)
    unwrapped.set_camera_rendering = cameras
    unwrapped.render_cameras = render
    policy.predict = timed("policy", policy.predict)
    out = rollout(env, source, None, skill=SKILL, seed=0, init_state_id=0, max_steps=max_steps)
    env.close()
    rendering = sum(rendered.values())
    physics = spent["step"] - rendered["step"]
    reset = spent["reset"] - rendered["reset"]
    return {
        "episode": out.wall_s, "steps": out.steps, "reset": reset, "physics": physics,
        "rendering": rendering, "policy": spent["policy"],
        "rollout code": out.wall_s - reset - physics - rendering - spent["policy"],
        "physics_step_s": float(np.median(physics_only_steps)),
    }  # fmt: skip


def reference_qps(batches: tuple[int, ...], repeats: int) -> dict[int, float]:
    """Observations per second of the reference preset's model at each batch size (random weights)."""
    config = make_config("reference")
    model = build_model(config, 0).eval()
    generator = torch.Generator().manual_seed(0)
    rates = {}
    for size in batches:
        pixels = torch.rand(size, 2, 3, 224, 224, generator=generator)
        state = torch.rand(size, 8, generator=generator) * 2 - 1
        ids = torch.randint(3, config.llm.vocab_size, (size, 50), generator=generator)
        prompts = PromptBatch(ids=ids, mask=torch.ones_like(ids))
        with torch.inference_mode():
            model(pixels[:1], state[:1], PromptBatch(ids=ids[:1], mask=torch.ones_like(ids[:1])))  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(pixels, state, prompts)
                times.append(time.perf_counter() - start)
        rates[size] = size / min(times)
        print(f"  reference preset, batch {size}: {rates[size]:.3f} queries/s (load {_load()})", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", type=int, default=0, help="LIBERO-Object task id")
    parser.add_argument("--episodes", type=int, default=8, help="episodes per configuration")
    parser.add_argument("--max-steps", type=int, default=48, help="step cap per episode")
    parser.add_argument("--image-size", type=int, default=None, help="camera size (default: the preset's)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows")
    parser.add_argument("--reference-qps", action="store_true", help="also time reference-preset batches")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = args.image_size or make_config("tiny").vision.image_size
    unit = _unit(args.task, size)
    print(f"LIBERO-Object task {args.task}, {size} px, {args.episodes} episodes x <= {args.max_steps} steps, "
          f"tiny preset (random weights), {os.cpu_count()} CPUs", flush=True)  # fmt: skip
    configurations = [("local, 1 worker", {"workers": 1}), ("local, 2 workers", {"workers": 2})]
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
        configurations += [
            ("Ray, 1 actor", {"workers": 1, "executor": "ray"}),
            ("Ray, 2 actors", {"workers": 2, "executor": "ray"}),
        ]
    configurations += [(f"batched K={k}, 1 worker", {"workers": 1, "batch_envs": k}) for k in (1, 4, 8)]
    rates, rollout_s, elapsed = {}, {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        # Not timed: first-use costs (file caches, the first simulator build) would fall on the first row.
        _timed_run(Path(scratch) / "warm-up", unit, 1, args.max_steps, workers=1)
        for index, (label, options) in enumerate(configurations):
            rate, rollout_s[label], elapsed[label] = _timed_run(
                Path(scratch) / str(index), unit, args.episodes, args.max_steps, **options
            )
            rates[label] = rate
            print(f"  {label:26s} {rate:7.2f} episodes/min   (load {_load()})", flush=True)
        # A quarter of the episodes on one worker again: the difference to the full run is the steady cost
        # of an episode, the rest the worker's one-off start-up (import, simulator and contender builds).
        few = max(1, args.episodes // 4)
        _, _, few_s = _timed_run(Path(scratch) / "few", unit, few, args.max_steps, workers=1)
    print(f"\n{'configuration':26s} {'episodes/min':>12s} {'vs local':>9s}")
    for label, rate in rates.items():
        same = rates["local, 2 workers" if "2" in label.split(",")[1] else "local, 1 worker"]
        print(f"{label:26s} {rate:12.2f} {rate / same:8.2f}x")
    if not args.no_ray:
        for workers in (1, 2):
            local, ray_rate = rates[f"local, {workers} worker" + ("s" if workers > 1 else "")], rates[
                f"Ray, {workers} actor" + ("s" if workers > 1 else "")]  # fmt: skip
            overhead = 100 * (local / ray_rate - 1)
            print(f"Ray overhead at {workers}: {overhead:+.1f}% of the local executor's time (target < 5%)")

    parts = breakdown(unit, args.max_steps)
    one = "local, 1 worker"
    steady = (elapsed[one] - few_s) / (args.episodes - few) if args.episodes > few else float("nan")
    start_up = elapsed[one] - args.episodes * steady
    runner = steady - rollout_s[one]
    total = parts["episode"] + max(runner, 0.0)
    print(f"\none episode ({parts['steps']} steps), in this process, plus the runner's steady share:")
    for name in ("reset", "physics", "rendering", "policy", "rollout code"):
        print(f"  {name:34s} {parts[name]:7.3f} s  {100 * parts[name] / total:5.1f}%")
    print(f"  {'runner + store + IPC':34s} {runner:7.3f} s  {100 * runner / total:5.1f}%")
    simulator = parts["reset"] + parts["physics"] + parts["rendering"]
    print(
        f"simulator (reset + physics + rendering): {100 * simulator / total:.1f}% of the episode "
        "(target >= 80%)"
    )
    print(f"worker start-up, once per worker (runs of {args.episodes} and {few} episodes): {start_up:.1f} s, "
          f"{100 * start_up / elapsed[one]:.0f}% of the {args.episodes}-episode run")  # fmt: skip
    print(f"physics-only limit: {1 / parts['physics_step_s']:.1f} steps/s; this episode ran "
          f"{parts['steps'] / parts['episode']:.1f} steps/s (load {_load()})")  # fmt: skip

    if args.reference_qps:
        print("\nreference preset (random weights), one query = one observation:")
        for threads in sorted({1, os.cpu_count() or 1}):
            torch.set_num_threads(threads)
            print(f" {threads} intra-op thread(s):")
            qps = reference_qps((1, 8), repeats=2)
            ratio = qps[8] / qps[1]
            print(f"batched K=8 vs K=1 at {threads} thread(s): {ratio:.2f}x queries/s (target >= 3x)")


if __name__ == "__main__":
    main()
