"""Rollout videos: what ``run --record-videos`` adds to an episode, beside the rollout itself (real LIBERO).

Usage::

    MUJOCO_GL=egl nice -n 10 python benchmarks/video_encoding.py
    MUJOCO_GL=egl python benchmarks/video_encoding.py --image-size 224 --steps 296 --repeats 3

Steps LIBERO-Object task 0 from init state 0 with a fixed 8-action chunk (arm down, gripper open) through
``ChunkedActions``, which renders the cameras once per chunk, as a chunking policy reads them; the
observation after reset and after each chunk goes into a ``FrameRecorder``, as in ``run --record-videos``.
Then the recorded frames are encoded (H.264 MP4 and the JPEG poster). Printed: the first reset (building
the simulator), the rollout's wall time (physics and the renders the policy needs anyway), the time to keep
the frames, the encode time, the frame count and the MP4's size. Timings on a shared machine are noisy;
frames and bytes are exact.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.envs.chunking import ChunkedActions
from vlamergebench.eval.video import FrameRecorder

CHUNK = 8


def main() -> None:
    """Run the measurement and print one line per quantity."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=296, help="a multiple of 8 (default: 37 chunks)")
    parser.add_argument("--repeats", type=int, default=3, help="encodes timed (the best is printed)")
    args = parser.parse_args()
    env = gym.make("vlamergebench/LIBERO-Object-v0", task=0, image_size=args.image_size)
    chunk = np.zeros((CHUNK, 7), np.float32)
    chunk[:, 2], chunk[:, 6] = -0.3, -1.0
    recorder, keeping = FrameRecorder(), 0.0
    began = time.perf_counter()
    observation, _ = env.reset(seed=0, options={"init_state_id": 0})
    reset = time.perf_counter() - began
    started = time.perf_counter()
    chunked = ChunkedActions(env, CHUNK)
    for _ in range(args.steps // CHUNK):
        kept = time.perf_counter()
        recorder.add(observation)
        keeping += time.perf_counter() - kept
        observation, _, terminated, truncated, _ = chunked.step(chunk)
        if terminated or truncated:
            break
    recorder.add(observation)
    rollout = time.perf_counter() - started
    encodes = []
    for _ in range(args.repeats):
        began = time.perf_counter()
        video = recorder.encode()
        encodes.append(time.perf_counter() - began)
    lines = [
        f"first reset (builds the simulator): {reset:.2f} s",
        f"rollout ({args.steps} steps at most, one render per chunk of {CHUNK}): {rollout:.2f} s",
        f"keeping the frames: {1000 * keeping:.1f} ms",
        f"encoding (best of {args.repeats}): {min(encodes):.2f} s",
        f"video: {video.frames} frames of {video.width} x {video.height}, {len(video.mp4)} bytes MP4, "
        f"{len(video.poster_jpeg)} bytes poster",
    ]
    print("\n".join(lines), flush=True)  # before the simulator's GL context is torn down at exit


if __name__ == "__main__":
    main()
