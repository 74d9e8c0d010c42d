"""The recipe of the embedded default expert set, and the one command that rebuilds it.

``vlamergebench run`` with no ``--experts`` evaluates the set shipped in ``vlamergebench/default_experts/``:
four tiny-preset experts (three LIBERO suites) sharing one tiny base, all made by the project's own pipeline,

1. scripted demonstrations (``collect-demos``) on LIBERO init states 10..49, so that the evaluation's init
   states 0..9 stay held out;
2. a base (``train --preset tiny``) on LIBERO-Object tasks 0-2, standing in for a pretrained VLA;
3. one expert per skill (``train --base``: LoRA on the VLM, the action expert trained in full).

``vlamergebench build-default-experts --out DIR`` runs the whole recipe (about two hours on 2 CPU cores);
every stage is skipped when its output exists and resumes when interrupted. Measure each expert on its own
skill with ``vlamergebench run --method expert_bank --experts DIR``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vlamergebench.envs import LIBERO_ENV_IDS
from vlamergebench.experts.stages import StageLog


@dataclass(frozen=True)
class SkillRecipe:
    """One expert of the default set: its skill and the LIBERO task it is trained and evaluated on."""

    name: str
    suite: str
    task_id: int

    @property
    def env_id(self) -> str:
        """The Gymnasium id of the skill's suite."""
        return LIBERO_ENV_IDS[self.suite]


SKILLS = (
    SkillRecipe("object_0", "libero_object", 0),  # pick up the alphabet soup and place it in the basket
    SkillRecipe("spatial_2", "libero_spatial", 2),  # black bowl from the table centre onto the plate
    SkillRecipe("goal_7", "libero_goal", 7),  # turn on the stove
    SkillRecipe("goal_8", "libero_goal", 8),  # put the bowl on the plate (same scene as goal_7)
)
# Scripted episodes attempted per task (init states FIRST_INIT_STATE onwards); only successes are kept.
# (suite, task id) -> attempts for the base's demonstrations.
BASE_DEMOS = {("libero_object", 0): 40, ("libero_object", 1): 10, ("libero_object", 2): 10}
EXPERT_DEMOS = 40
FIRST_INIT_STATE = 10
DEMO_IMAGE_SIZE = 128
_SHARED_TRAIN = {"batch_size": 32, "learning_rate": 1e-3, "lr_schedule": "cosine", "checkpoint_every": 500}
BASE_TRAIN = {"steps": 2000, **_SHARED_TRAIN}
EXPERT_TRAIN = {"steps": 1500, **_SHARED_TRAIN}
SET_NAME = "vlamergebench-default"


def demo_plan() -> dict[tuple[str, int], int]:
    """Every demonstration file the recipe needs: (suite, task id) -> episodes to collect."""
    plan = dict(BASE_DEMOS)
    for skill in SKILLS:
        key = (skill.suite, skill.task_id)
        plan[key] = max(plan.get(key, 0), EXPERT_DEMOS)
    return plan


def demo_path(demos: Path, suite: str, task_id: int) -> Path:
    """Where ``collect-demos`` writes the demonstrations of one task."""
    return demos / f"{suite}_task{task_id}.hdf5"


def build_default_experts(
    out: str | os.PathLike[str],
    *,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the recipe into ``out`` (demos/, base/, one directory per skill, expert_set.json).

    Returns:
        The expert-set directory ``out``.
    """
    from vlamergebench.experts.collect import CollectConfig, collect_demos
    from vlamergebench.policies.checkpoint import CONFIG_FILE, write_expert_set
    from vlamergebench.policies.registry import make_config
    from vlamergebench.policies.train import TrainConfig, train

    if threads:
        import torch

        torch.set_num_threads(threads)
    out = Path(out)
    demos = out / "demos"

    stage = StageLog(out, log).run

    for (suite, task_id), episodes in demo_plan().items():
        path = demo_path(demos, suite, task_id)
        config = CollectConfig(
            suite=suite,
            task=task_id,
            episodes=episodes,
            start_init_state=FIRST_INIT_STATE,
            seed=FIRST_INIT_STATE,
            image_size=DEMO_IMAGE_SIZE,
            out=str(demos),
            resume=path.with_name(path.name + ".partial").exists(),
        )
        stage(f"demos {suite} task {task_id}", path, lambda config=config: collect_demos(config, progress))

    base = out / "base"
    base_demos = [str(demo_path(demos, suite, task_id)) for suite, task_id in BASE_DEMOS]
    stage(
        "base",
        base / CONFIG_FILE,
        lambda: train(
            TrainConfig.from_dict({**BASE_TRAIN, "role": "base"}),
            base_demos,
            base,
            policy=make_config("tiny"),
            command="vlamergebench build-default-experts",
            progress=progress,
        ),
    )
    for skill in SKILLS:
        expert = out / skill.name
        record = {
            "name": skill.name,
            "suite": skill.suite,
            "task": None,
            "task_id": skill.task_id,
            "env_id": skill.env_id,
        }
        stage(
            f"expert {skill.name}",
            expert / CONFIG_FILE,
            lambda expert=expert, skill=skill, record=record: train(
                TrainConfig.from_dict({**EXPERT_TRAIN, "role": "expert"}),
                [str(demo_path(demos, skill.suite, skill.task_id))],
                expert,
                base=base,
                skill=record,
                command="vlamergebench build-default-experts",
                progress=progress,
            ),
        )
    write_expert_set(out, SET_NAME, base, [out / skill.name for skill in SKILLS])
    log(
        f"wrote {out / 'expert_set.json'}; measure each expert: vlamergebench run --method expert_bank "
        f"--experts {out}"
    )
    return out
