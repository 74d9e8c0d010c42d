"""LIBERO step rate, side by side: raw LIBERO, our Gymnasium env, and chunked execution (one render a chunk).

Targets (issue 2): our env's overhead over raw LIBERO under 10%; chunked execution at least 4x the steps per
second of per-step rendering. Issue 18: chunked execution with the ``fast`` render profile (decimated visual
meshes, vlamergebench/envs/fast_meshes.py) at least 1.8x the chunked steps per second of the ``full`` one.
All runs use the same task, init state, image size and action sequence, in one process, one after the other
(the fast profile's mesh cache is filled before its timed steps). Wall-clock timings: on a shared machine,
run it more than once.

    python benchmarks/libero_step_rate.py --suite libero_object --task 0 --image-size 224 --steps 80 --chunk 8
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import gymnasium as gym
import numpy as np

import vlamergebench.envs
from vlamergebench.envs.chunking import ChunkedActions


def _actions(steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-0.3, 0.3, (steps, 7))  # (steps, 7): gentle motion, gripper sign varies
    return actions


def raw_libero(suite: str, task: int, size: int, actions: np.ndarray) -> float:
    """Steps per second of LIBERO's own OffScreenRenderEnv (both cameras rendered every step)."""
    from libero.libero import benchmark, get_libero_path
    from libero.libero.envs import OffScreenRenderEnv

    with contextlib.redirect_stdout(io.StringIO()):
        task_spec = benchmark.get_benchmark_dict()[suite]().get_task(task)
        init = benchmark.get_benchmark_dict()[suite]().get_task_init_states(task)[0]
    bddl = f"{get_libero_path('bddl_files')}/{task_spec.problem_folder}/{task_spec.bddl_file}"
    env = OffScreenRenderEnv(bddl_file_name=bddl, camera_heights=size, camera_widths=size)
    env.seed(0)
    env.reset()
    env.set_init_state(init)
    for action in actions[:3]:  # warm-up
        env.step(action)
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    rate = len(actions) / (time.perf_counter() - start)
    env.sim._render_context_offscreen.gl_ctx.make_current()
    env.close()
    return rate


def ours(
    env_id: str,
    task: int,
    size: int,
    actions: np.ndarray,
    chunk: int,
    rendering: bool = True,
    profile: str = "full",
) -> float:
    """Steps per second of our env: per step (chunk 1) or through ChunkedActions (one render a chunk)."""
    kwargs = {} if profile == "full" else {"render_profile": profile}
    env = gym.make(env_id, task=task, image_size=size, camera_rendering=rendering, **kwargs)
    runner = ChunkedActions(env, chunk) if chunk > 1 else env
    runner.reset(seed=0, options={"init_state_id": 0})
    env.unwrapped.set_camera_rendering(rendering)
    for action in actions[:3]:  # warm-up
        env.step(action)
    batches = actions.reshape(-1, chunk, 7) if chunk > 1 else actions
    start = time.perf_counter()
    for batch in batches:
        runner.step(batch)
    rate = len(actions) / (time.perf_counter() - start)
    env.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="libero_object")
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=80, help="timed steps per configuration")
    parser.add_argument("--chunk", type=int, default=8)
    args = parser.parse_args()
    steps = args.steps - args.steps % args.chunk
    actions = _actions(steps, seed=0)
    env_id = vlamergebench.envs.LIBERO_ENV_IDS[args.suite]

    raw = raw_libero(args.suite, args.task, args.image_size, actions)
    wrapped = ours(env_id, args.task, args.image_size, actions, chunk=1)
    chunked = ours(env_id, args.task, args.image_size, actions, chunk=args.chunk)
    physics = ours(env_id, args.task, args.image_size, actions, chunk=1, rendering=False)
    fast = ours(env_id, args.task, args.image_size, actions, chunk=args.chunk, profile="fast")

    print(f"{args.suite} task {args.task}, 2 cameras at {args.image_size} px, {steps} timed steps each")
    print(f"{'configuration':62s} {'steps/s':>8s}  {'vs raw':>7s}")
    rows = [
        ("raw LIBERO OffScreenRenderEnv (render every step)", raw),
        ("vlamergebench env (render every step)", wrapped),
        (f"vlamergebench ChunkedActions({args.chunk}) (render once a chunk)", chunked),
        ("vlamergebench env, cameras off (physics only)", physics),
        (f"ChunkedActions({args.chunk}), render profile fast (decimated meshes)", fast),
    ]
    for name, rate in rows:
        print(f"{name:62s} {rate:8.1f}  {rate / raw:6.2f}x")
    print(f"wrapper overhead vs raw: {100 * (raw / wrapped - 1):+.1f}% (target < 10%)")
    print(f"chunked vs per-step rendering: {chunked / wrapped:.1f}x (target >= 4x)")
    print(f"chunked, fast vs full render profile: {fast / chunked:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
