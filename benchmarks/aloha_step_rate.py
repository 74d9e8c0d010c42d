"""ALOHA bimanual suites: step rate (per-step vs chunked rendering, gym-aloha's own env) and scripted success.

Usage::

    nice -n 10 python benchmarks/aloha_step_rate.py                      # both, defaults below
    python benchmarks/aloha_step_rate.py --episodes 50 --train-episodes 50 --rate-steps 200

Step rates drive the env with the scripted expert's own actions (a real trajectory, not a still arm), 224 px
images of the two default cameras, one thread. ``chunked`` executes 8-action chunks through ChunkedActions,
which renders once per chunk, as a chunking policy (MergeVLA: 8) reads. ``gym-aloha`` is the package's env
(three 480x640 cameras rendered every step). Success counts the scripted expert's episodes on the 50
evaluation layouts (``init_state_id`` 0..49) and on training layouts (seeds 0..n-1), physics only.
Timings on a shared machine are noisy; the counts are exact.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.envs.chunking import ChunkedActions
from vlamergebench.policies.scripted.aloha import AlohaScriptedExpert, collect_episode

IDS = {"transfer_cube": "vlamergebench/AlohaTransferCube-v0", "insertion": "vlamergebench/AlohaInsertion-v0"}
CHUNK = 8


def scripted_actions(task: str, steps: int) -> np.ndarray:
    """The expert's actions on evaluation layout 0, ``(steps, 14)`` (the episode, repeated if shorter)."""
    env = gym.make(IDS[task], image_size=32)
    episode = collect_episode(env, AlohaScriptedExpert(task), seed=0, init_state_id=0, render=False)
    env.close()
    return np.resize(episode["actions"], (steps, 14)).astype(np.float32)


def rate(task: str, actions: np.ndarray, mode: str, image_size: int) -> float:
    """Env steps per second over ``actions``, after one warm-up reset (GL context creation)."""
    if mode == "gym-aloha":
        from gym_aloha.env import AlohaEnv

        env = gym.wrappers.TimeLimit(AlohaEnv(task, obs_type="pixels_agent_pos"), 10_000)
    else:
        env = gym.make(IDS[task], image_size=image_size, max_episode_steps=10_000)
        if mode == "physics":
            env.unwrapped.set_camera_rendering(False)
    if mode == "chunked":
        env = ChunkedActions(env, CHUNK)
    env.reset(seed=0, options=None if mode == "gym-aloha" else {"init_state_id": 0})
    env.reset(seed=0, options=None if mode == "gym-aloha" else {"init_state_id": 0})
    started = time.perf_counter()
    if mode == "chunked":
        for chunk in actions[: len(actions) // CHUNK * CHUNK].reshape(-1, CHUNK, 14):
            env.step(chunk)
        steps = len(actions) // CHUNK * CHUNK
    else:
        for action in actions:
            env.step(action)
        steps = len(actions)
    elapsed = time.perf_counter() - started
    env.close()
    return steps / elapsed


def success(task: str, episodes: int, train_episodes: int) -> tuple[int, int, list[int], list[int]]:
    """Scripted successes on evaluation layouts 0..episodes-1 and on training seeds 0..train_episodes-1."""
    from tqdm import tqdm

    env = gym.make(IDS[task], image_size=32)
    expert = AlohaScriptedExpert(task)
    failed_eval, failed_train = [], []
    for k in tqdm(range(episodes), desc=f"{task} evaluation layouts", leave=False):
        if not collect_episode(env, expert, seed=k, init_state_id=k, render=False)["success"]:
            failed_eval.append(k)
    for seed in tqdm(range(train_episodes), desc=f"{task} training layouts", leave=False):
        if not collect_episode(env, expert, seed=seed, render=False)["success"]:
            failed_train.append(seed)
    env.close()
    return episodes - len(failed_eval), train_episodes - len(failed_train), failed_eval, failed_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate-steps", type=int, default=160, help="steps timed per mode (default 160)")
    parser.add_argument("--gym-aloha-steps", type=int, default=40, help="steps timed on gym-aloha's env")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--episodes", type=int, default=50, help="evaluation layouts (max 50)")
    parser.add_argument("--train-episodes", type=int, default=50, help="training-layout episodes")
    parser.add_argument("--skip-rate", action="store_true")
    parser.add_argument("--skip-success", action="store_true")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    if not args.skip_rate:
        print(f"step rate, steps/s ({args.image_size} px, cameras top+angle; gym-aloha: 3 x 480x640)")
        print(f"{'task':<14} {'per-step':>9} {'chunked':>9} {'physics':>9} {'gym-aloha':>10} {'speed-up':>9}")
        for task in IDS:
            actions = scripted_actions(task, args.rate_steps)
            per_step = rate(task, actions, "per-step", args.image_size)
            chunked = rate(task, actions, "chunked", args.image_size)
            physics = rate(task, actions, "physics", args.image_size)
            upstream = rate(task, actions[: args.gym_aloha_steps], "gym-aloha", args.image_size)
            print(
                f"{task:<14} {per_step:9.1f} {chunked:9.1f} {physics:9.1f} {upstream:10.2f} "
                f"{chunked / per_step:8.1f}x"
            )
    if not args.skip_success:
        print(f"\nscripted success (physics only): evaluation layouts 0..{args.episodes - 1}, training seeds")
        print(f"{'task':<14} {'eval':>9} {'rate':>6} {'train':>9} {'rate':>6}  failed (eval; train)")
        for task in IDS:
            ok_eval, ok_train, failed_eval, failed_train = success(task, args.episodes, args.train_episodes)
            print(
                f"{task:<14} {ok_eval:>4}/{args.episodes:<4} {ok_eval / max(args.episodes, 1):6.2f} "
                f"{ok_train:>4}/{args.train_episodes:<4} {ok_train / max(args.train_episodes, 1):6.2f}  "
                f"{failed_eval}; {failed_train}"
            )


if __name__ == "__main__":
    main()
