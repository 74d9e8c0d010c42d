"""Fidelity of the fast render profile: fast vs full camera frames over init states of every LIBERO suite.

For each suite and task, a full-profile and a fast-profile env (vlamergebench/envs/fast_meshes.py) are
reset to the same init states with the same seed; both cameras are compared at the policy's resolution
(default: the embedded default experts' input size) with scikit-image's PSNR and SSIM (data range 255, SSIM
over the colour channels). The simulator states after the reset's settle steps are compared as well: the
fast profile changes visual meshes only, so they must be equal. Printed: per suite and camera, the mean and
the worst PSNR and SSIM over init states, and each profile's time for one frame of both cameras.

    python benchmarks/render_fidelity.py --init-states 10            # task 0 of the four standard suites
    python benchmarks/render_fidelity.py --init-states 3 --tasks 0 --png /tmp/fidelity.png

With ``--png`` a contact sheet (full, fast, 4x absolute difference; first init state of each suite, agentview)
is written for a look.
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import pandas as pd

import vlamergebench.envs
from vlamergebench.envs.libero import CAMERAS

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def policy_image_size() -> int:
    """The embedded default experts' camera resolution (the policy's input)."""
    from vlamergebench.eval.run import DEFAULT_EXPERTS
    from vlamergebench.policies.checkpoint import ExpertSet

    return int(ExpertSet.open(DEFAULT_EXPERTS).base.config["policy"]["vision"]["image_size"])


def frame_ms(env: gym.Env, repeats: int = 5) -> float:
    """Milliseconds to render both cameras once (the state as it is)."""
    start = time.perf_counter()
    for _ in range(repeats):
        env.unwrapped.render_cameras()
    return 1000 * (time.perf_counter() - start) / repeats


def compare_task(suite: str, task: int, size: int, init_states: int) -> tuple[list[dict], dict, np.ndarray]:
    """Per init state and camera: PSNR, SSIM; the frame times; the first agentview triple for the sheet."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    env_id = f"vlamergebench/{vlamergebench.envs.LIBERO_SUITES[suite][0]}-v0"
    envs = {profile: gym.make(env_id, task=task, image_size=size, render_profile=profile) for profile in
            ("full", "fast")}  # fmt: skip
    rows, sheet = [], None
    try:
        for k in range(init_states):
            observations = {p: env.reset(seed=0, options={"init_state_id": k})[0] for p, env in envs.items()}
            states = {p: env.unwrapped.get_sim_state() for p, env in envs.items()}
            state_difference = float(np.abs(states["full"] - states["fast"]).max())
            for camera in CAMERAS:
                full, fast = observations["full"][camera], observations["fast"][camera]
                rows.append(
                    {
                        "suite": suite,
                        "task": task,
                        "init_state": k,
                        "camera": camera,
                        "psnr_db": peak_signal_noise_ratio(full, fast, data_range=255),
                        "ssim": structural_similarity(full, fast, channel_axis=2, data_range=255),
                        "state_max_abs_diff": state_difference,
                    }
                )
            if sheet is None:
                full, fast = observations["full"]["agentview_image"], observations["fast"]["agentview_image"]
                difference = np.clip(4 * np.abs(full.astype(int) - fast.astype(int)), 0, 255).astype(np.uint8)
                sheet = np.concatenate([full, fast, difference], axis=1)
        times = {f"{p}_frame_ms": frame_ms(env) for p, env in envs.items()}
    finally:
        for env in envs.values():
            env.close()
    return rows, times, sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated LIBERO suites")
    parser.add_argument("--tasks", default="0", help="comma-separated task ids, in every suite")
    parser.add_argument("--init-states", type=int, default=10, help="init states 0..n-1 per task")
    parser.add_argument("--image-size", type=int, default=None, help="default: the policy's input size")
    parser.add_argument("--png", default=None, help="write a contact sheet (full | fast | 4x |difference|)")
    args = parser.parse_args()
    size = args.image_size or policy_image_size()
    rows, times, sheets = [], [], []
    for suite in args.suites.split(","):
        for task in (int(t) for t in args.tasks.split(",")):
            task_rows, task_times, sheet = compare_task(suite, task, size, args.init_states)
            rows += task_rows
            times.append({"suite": suite, "task": task, **task_times})
            sheets.append(sheet)
    frame = pd.DataFrame(rows)
    print(f"fast vs full render profile, {size} px, init states 0..{args.init_states - 1}, seed 0")
    summary = frame.groupby(["suite", "camera"]).agg(
        psnr_mean_db=("psnr_db", "mean"),
        psnr_min_db=("psnr_db", "min"),
        ssim_mean=("ssim", "mean"),
        ssim_min=("ssim", "min"),
        frames=("ssim", "size"),
    )
    print(summary.round(3).to_string())
    overall = frame.groupby("camera")[["psnr_db", "ssim"]].agg(["mean", "min"])
    print("\nall suites:")
    print(overall.round(3).to_string())
    timing = pd.DataFrame(times).set_index(["suite", "task"])
    timing["speed-up"] = timing["full_frame_ms"] / timing["fast_frame_ms"]
    print("\ntime for one frame of both cameras:")
    print(timing.round(2).to_string())
    print(f"\nsimulator states equal in every pair: {bool((frame['state_max_abs_diff'] == 0).all())}")
    if args.png:
        import matplotlib.pyplot as plt

        plt.imsave(args.png, np.concatenate(sheets, axis=0))
        print(f"contact sheet: {args.png}")


if __name__ == "__main__":
    main()
