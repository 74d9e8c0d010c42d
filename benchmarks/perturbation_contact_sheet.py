"""Contact sheet of the perturbation axes: one task's third-person frame per axis at levels 0, 1, 3 and 5.

Regenerates ``docs/images/perturbations_contact_sheet.png`` (seed 0, init state 0, after the settle steps):

    python benchmarks/perturbation_contact_sheet.py --suite libero_spatial --task 0 \
        --out docs/images/perturbations_contact_sheet.png

Scene axes need one simulator per (axis, level): about 20 builds, a few minutes on a 2-core CPU. The
language row prints the instruction the policy reads instead of a frame (the pixels do not change).
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap
from pathlib import Path

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tqdm import tqdm

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.envs.perturb.config import ALL_AXES
from vlamergebench.envs.perturb.language import InstructionRewrite
from vlamergebench.envs.perturb.noise import SensorNoise

LEVELS = (1, 3, 5)
WRAPPER_AXES = {"noise": SensorNoise, "language": InstructionRewrite}


def _frame(env: gym.Env) -> tuple:
    observation, _ = env.reset(seed=0, options={"init_state_id": 0})
    return observation["agentview_image"], observation["instruction"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite", default="libero_spatial", help="a standard LIBERO suite with a perturbed id"
    )
    parser.add_argument("--task", type=int, default=0)
    parser.add_argument("--size", type=int, default=112, help="tile side in pixels")
    parser.add_argument("--out", type=Path, default=Path("docs/images/perturbations_contact_sheet.png"))
    args = parser.parse_args()

    base_id = next(s.id for s in gym.registry.values() if s.kwargs == {"suite": args.suite})
    perturbed_id = base_id.replace("LIBERO-", "LIBERO-Perturbed-")
    base = gym.make(base_id, task=args.task, image_size=args.size)
    reference, instruction = _frame(base)
    tiles: dict[tuple[str, int], tuple] = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for axis, level in tqdm([(a, lv) for a in ALL_AXES for lv in LEVELS], desc="axis x level"):
            if axis in WRAPPER_AXES:
                tiles[axis, level] = _frame(WRAPPER_AXES[axis](base, level=level, seed=0))
                continue
            env = gym.make(
                perturbed_id,
                task=args.task,
                image_size=args.size,
                perturbation={axis: level},
                cache_dir=cache_dir,
                layout_init_states=1,
            )
            tiles[axis, level] = _frame(env)
            env.close()
    base.close()

    figure, grid = plt.subplots(
        len(ALL_AXES), 1 + len(LEVELS), figsize=(1.5 * (1 + len(LEVELS)), 1.5 * len(ALL_AXES))
    )
    for row, axis in enumerate(ALL_AXES):
        for column, level in enumerate((0, *LEVELS)):
            cell = grid[row, column]
            cell.set_xticks([])
            cell.set_yticks([])
            image, text = (reference, instruction) if level == 0 else tiles[axis, level]
            if axis == "language":
                cell.text(0.5, 0.5, textwrap.fill(text, 22), ha="center", va="center", fontsize=5, wrap=True)
            else:
                cell.imshow(image)
            if row == 0:
                cell.set_title("reference" if level == 0 else f"level {level}", fontsize=7)
            if column == 0:
                cell.set_ylabel(axis.replace("_", "\n"), fontsize=7)
    figure.suptitle(f"{args.suite} task {args.task}: vlamergebench perturbations (seed 0)", fontsize=8)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
