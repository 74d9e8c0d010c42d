"""The recipe of the default expert set v2: a broadly pretrained base and mergeable, suite-like experts.

Why a v2: on the first default set every single-model merge scored 0%, because its experts were not mergeable
(task vectors of 0.2-0.7 times the weights, nearly orthogonal, action experts re-initialised and trained from
scratch). Merging papers (MergeVLA arXiv 2511.18810, CARVE, Task Arithmetic arXiv 2212.04089) all start from a
*pretrained* model fine-tuned gently, so that task vectors are small and shallow head blocks stay close. This
recipe states those preconditions and was fixed before any merge result on it was looked at:

1. **Base** (``small`` preset: 8 LLM layers, 8 head blocks): multi-task training of every weight on 14
   scripted LIBERO tasks across the three scene families, disjoint from every expert's tasks (Object 5-9,
   Spatial 5-9, Goal 0, 1, 2, 4). It stands in for VLA pretraining.
2. **Experts**: four suite-like experts of two tasks each that the base never saw; two experts share a
   scene family, so routing between them is not trivial (revision 5: the two LIBERO-Object experts).
3. **Fine-tuning at upstream strength**: LoRA on the VLM at lr 2e-4 (MergeVLA / VLA-Adapter), alpha = 2r,
   a different ``lora_A`` seed per expert; the head and action queries start from the base's at the same
   rate (a fifth of the base's pretraining rate of 1e-3); the proprio projector is frozen at the base's
   value; every expert uses the base's normalisation statistics. Departure from MergeVLA's recipe, which
   re-initialises each expert's head: at our scale a fresh head ends 50-57% away from every other expert's
   in every block, while MergeVLA's premise (and its measurements at 24 blocks) is that shallow
   cross-attention blocks of different experts stay close; starting from the pretrained head is the
   small-scale stand-in for that observation.
4. **Held-out evaluation**: demonstrations use LIBERO init states 20 and up; evaluation uses 0-19.
5. **Acceptance** (``stats.json`` beside ``expert_set.json``): task-vector size per group relative to the
   base (target <= 0.10), pairwise cosine and sign conflict, each expert's success on each of its tasks
   (must be >= 80% on init states 0-19, else the build fails rather than ship the expert) and the base's
   success on the experts' tasks.

Revision 1 (2026-12-05, decided from training-side measurements only, before any merge result on the set):
the first build trained the head at a quarter of the LoRA rate (5e-5). Its experts reached 60-100% (seven of
eight tasks under the 80% bar) on held-out init states 0-9, and 4-7 of 8 on init states 20-27 that their own
demonstrations came from (44 of 64; held out 56 of 80), so they under-fit rather than over-fit; their heads
had moved 4-6% of the base's norm (half the 10% target) while the LoRA'd LLM moved 30%. The head now trains
at the LoRA rate, 2e-4.
Revision 2 (2026-12-05, again from training-side measurements only): under revision 1, object_01 reached
8/10 and 9/10, spatial_01 9/10 and 6/10 (the bowl "next to the ramekin"), and both experts' training losses
still fell by a quarter over the last 1000 of their 2000 steps (object_01: 0.0226 -> 0.0168 per 250-step
mean), so they still under-fit: experts now train 4000 steps (about 20 passes over their frames). And own
success is measured on all 20 held-out init states (0-19) instead of 10: with 8 tasks, a 10-episode bar
refuses a set of true-90% experts 44% of the time by chance alone (1 - P(X >= 8) ** 8 for X ~ Bin(10, 0.9));
20 episodes, 30%.

Under revision 2, spatial_01 (4000 steps, 57.2 min at two threads) reached 17/20 and 10/20 on init states
0-19: the bowl "next to the ramekin" stays near half (6/10, 6/10, 10/20 over revisions 0-2), so training
longer is not what it lacks.
Revision 3 (2026-12-06, from the expert's own rollouts only): tracking both bowls in the simulator over
revision 2's spatial_01 on that task (init states 0-9, 5/10 successes) showed it always grasps the right bowl
(no grounding failure), then either closes the gripper before reaching it (2 of 10: the bowl never lifts) or
carries it past the plate (3 of 10: lifted 16-18 cm and moved 34-38 cm, where successes lift 8-12 cm and move
26-28 cm). Precision failures that three revisions of the training settings did not move; the recipe can
learn the suite's other bowl placements, so the task is replaced by the lowest-numbered LIBERO-Spatial task
that neither the base nor another expert uses (task 2, the bowl "from table center"), chosen by that rule
and not by any result; the expert is renamed ``spatial_02``. Under revision 3, object_01 reached 20/20 and
20/20, spatial_02 16/20 and 18/20 on init states 0-19 (both at or above the bar); goal_78 19/20 and 19/20;
goal_69 17/20 on the cream cheese and 12/20 on the wine bottle "on the rack" (7/10 under revision 0): the set
was refused.
Revision 4 (2026-12-06, from the expert's own rollouts only): tracking the bottle over revision 3's goal_69
on its failing init states (8 of 8 failures looked at: 0, 4, 8, 12, 14, 15, 17, 18) showed every failure at
the grasp: the gripper closes beside the bottle (it never lifts more than 4 cm) and in 6 of 8 tips it over
(33-98 degrees); no failure happens after a lift (a success lifts it 41 cm and sets it within 1 cm of the
rack's site). Training settings did not move it (7/10 at 2000 steps, 12/20 at 4000 with the faster head).
The revision-3 rule cannot replace the task: the Goal tasks neither the base nor another expert uses (3 and
5) are the two the scripted expert cannot demonstrate (26% and 0%). Nor can more clean demonstrations be had:
LIBERO has 50 init states per task, 20 held out for evaluation, and the scripted expert is deterministic. A
learner that closes beside the bottle has drifted into states no clean demonstration visits, the covariate
shift DART addresses (Laskey et al., arXiv 1703.09327): goal_69 now also trains on one noise-injected
demonstration per init state 20-49 and task (the arm command executed with Gaussian noise of std 0.1, a
half to a sixth of the spread of the expert's own translation commands on the wine task, the expert's
correction recorded). The other experts are not rebuilt. Noise-injected files live in ``demos/noise_0.1/``
and an expert's recorded files are compared with the recipe's, so an expert trained on other files is
rebuilt.
Revision 5 (2026-12-06, from the expert's own rollouts only): under revision 4, goal_69 reached 18/20 on the
cream cheese and again 12/20 on the wine bottle: noise-injected demonstrations did not move the grasp
failures that two revisions of training settings had not moved either. No Goal task can replace it (3 and 5
cannot be demonstrated, 0, 1, 2 and 4 are the base's), and an expert of Goal 6 alone would break the recipe's
two-to-five-tasks rule, so goal_69 is dropped and the fourth expert moves to the scene family whose unused
tasks the scripted expert demonstrates every time: LIBERO-Object (2, 3 and 4, each 50/50; LIBERO-Spatial's
unused tasks are 1, the one revision 3 dropped, and 3 and 4 at 49/50 and 46/50). As in revision 3's rule it
takes that family's two lowest-numbered unused tasks, Object 2 and 3 (the salad dressing and the bbq sauce
into the basket): ``object_23``, trained like every other expert (no noise-injected demonstrations). This
weakens the scene-sharing requirement, and the weakening is stated: the Goal experts shared one identical
scene, while LIBERO-Object tasks share one floor, basket and camera with a different set of six groceries
per task. The sets overlap: Object 2's scene holds both of object_01's targets (alphabet soup, cream cheese)
and five of Object 0's six groceries; Object 3's holds both of them as well; Object 0's holds Object 2's
salad dressing. So a router cannot tell the two Object experts apart by which objects are in view, only by
the instruction and which object is to be moved. The other three experts are not rebuilt. Under revision 5
the set was accepted: object_23 reached 16/20 (salad dressing) and 20/20 (bbq sauce) on init states 0-19.

Rendering the evaluation cameras at the demonstrations' 128 px (then resized like the training frames)
instead of 84 px changed success by at most one episode in ten per task, so evaluation keeps rendering at the
policy's input size.

``vlamergebench build-default-experts --recipe v2 --out DIR`` runs it; every stage is skipped when its output
exists and resumes when interrupted (expect several CPU-hours on 2 cores; each stage's time is logged to
``DIR/build_log.jsonl``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlamergebench.envs import LIBERO_ENV_IDS
from vlamergebench.experts.stages import StageLog


@dataclass(frozen=True)
class SkillRecipe:
    """One expert: its skill name and the LIBERO tasks (one suite) it is trained and evaluated on."""

    name: str
    suite: str
    task_ids: tuple[int, ...]
    noisy_demos: float = 0.0  # > 0: also train on DART noise-injected demos of each task at this std

    @property
    def env_id(self) -> str:
        """The Gymnasium id of the skill's suite."""
        return LIBERO_ENV_IDS[self.suite]


DemoKey = tuple[str, int, float]  # (suite, task id, action noise) of one demonstration file

# (suite, task ids) the base is pretrained on: every scene family, none of the experts' tasks.
BASE_TASKS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("libero_object", (5, 6, 7, 8, 9)),
    ("libero_spatial", (5, 6, 7, 8, 9)),
    ("libero_goal", (0, 1, 2, 4)),
)
SKILLS = (
    SkillRecipe("object_01", "libero_object", (0, 1)),  # alphabet soup / cream cheese into the basket
    SkillRecipe("spatial_02", "libero_spatial", (0, 2)),  # black bowl (two placements) onto the plate
    SkillRecipe("goal_78", "libero_goal", (7, 8)),  # turn on the stove / bowl on the plate
    SkillRecipe("object_23", "libero_object", (2, 3)),  # salad dressing / bbq sauce into the basket (rev. 5)
)
BASE_DEMO_ATTEMPTS = 20  # scripted episodes per base task; only successes are kept
EXPERT_DEMO_ATTEMPTS = 30  # per expert task
FIRST_DEMO_INIT_STATE = 20  # demos use init states 20.., evaluation 0..19
DEMO_IMAGE_SIZE = 128
PRESET = "small"
BASE_TRAIN = {
    "role": "base",
    "steps": 3000,
    "batch_size": 32,
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "warmup_steps": 100,
    "checkpoint_every": 250,
}
EXPERT_TRAIN = {
    "role": "expert",
    "steps": 4000,
    "batch_size": 32,
    "learning_rate": 2e-4,
    "lr_schedule": "cosine",
    "head_init": "base",
    "head_learning_rate": 2e-4,
    "freeze_proprio_projector": True,
    "norm_stats": "base",
    "checkpoint_every": 250,
}
ACCEPTANCE_EPISODES = 20  # per expert task: every held-out init state, 0..19
OWN_SUCCESS_BAR = 0.8
TASK_VECTOR_RATIO_TARGET = 0.10
SET_NAME = "vlamergebench-default-v2"
STATS_FILE = "stats.json"


def demo_plan() -> dict[DemoKey, int]:
    """Every demonstration file the recipe needs: (suite, task id, action noise) -> scripted attempts."""
    plan = {(suite, task, 0.0): BASE_DEMO_ATTEMPTS for suite, tasks in BASE_TASKS for task in tasks}
    for skill in SKILLS:
        for task in skill.task_ids:
            if (skill.suite, task, 0.0) in plan:
                raise AssertionError(f"{skill.name}: task {skill.suite} {task} is also a base task")
        plan |= skill_demo_plan(skill)
    return plan


def skill_demo_plan(skill: SkillRecipe) -> dict[DemoKey, int]:
    """The demonstration files one expert trains on: clean ones, and noise-injected ones if it has them."""
    noises = (0.0, skill.noisy_demos) if skill.noisy_demos > 0 else (0.0,)
    return {(skill.suite, task, noise): EXPERT_DEMO_ATTEMPTS for noise in noises for task in skill.task_ids}


def _is_base_task(key: DemoKey) -> bool:
    return key[2] == 0.0 and any(key[0] == suite and key[1] in tasks for suite, tasks in BASE_TASKS)


def demo_path(demos: Path, suite: str, task_id: int, action_noise: float = 0.0) -> Path:
    """Where ``collect-demos`` writes the demonstrations of one task.

    Noise-injected demonstrations get their own folder (``demos/noise_<std>/``): the same file name, never
    mistaken for the clean file.
    """
    folder = demos if action_noise == 0.0 else demos / f"noise_{action_noise:g}"
    return folder / f"{suite}_task{task_id}.hdf5"


def skill_demo_paths(demos: Path, skill: SkillRecipe) -> list[Path]:
    """The demonstration files an expert trains on (clean ones first, task by task)."""
    return [demo_path(demos, *key) for key in skill_demo_plan(skill)]


def _collect_one(
    suite: str, task_id: int, attempts: int, demos: str, action_noise: float = 0.0
) -> tuple[str, float]:
    """One task's demonstrations (in a worker process; resumes a ``.partial`` file): (summary, seconds)."""
    from vlamergebench.experts.collect import CollectConfig, collect_demos

    started = time.monotonic()
    path = demo_path(Path(demos), suite, task_id, action_noise)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = CollectConfig(
        suite=suite,
        task=task_id,
        episodes=attempts,
        start_init_state=FIRST_DEMO_INIT_STATE,
        seed=FIRST_DEMO_INIT_STATE,
        image_size=DEMO_IMAGE_SIZE,
        out=str(path.parent),
        resume=path.with_name(path.name + ".partial").exists(),
        action_noise=action_noise,
    )
    result = collect_demos(config, progress=False)
    summary = f"{result.successes}/{len(result.episodes)} scripted successes"
    return summary, time.monotonic() - started


def expert_train_config(index: int) -> dict[str, Any]:
    """The training config of the ``index``-th expert (from 1): the recipe's, with its own seeds."""
    return {**EXPERT_TRAIN, "seed": index, "lora_seed": index}


def stale_fields(expert: Path, index: int) -> dict[str, Any]:
    """Fields of the recipe's training config (and its demonstration files) the expert was not trained with.

    An expert built by an earlier revision of the recipe is not a finished stage of this one: the build
    rebuilds it instead of shipping it. Empty when the expert matches (or does not exist). Demonstration
    files compare by their folder and name inside the set's ``demos/`` (noise-injected ones are another
    folder).
    """
    from vlamergebench.policies.checkpoint import CONFIG_FILE

    path = expert / CONFIG_FILE
    if not path.is_file():
        return {}
    provenance = json.loads(path.read_text()).get("provenance", {})
    recorded = provenance.get("train", {})
    stale = {key: value for key, value in expert_train_config(index).items() if recorded.get(key) != value}
    wanted = [_demo_name(p) for p in skill_demo_paths(Path("demos"), SKILLS[index - 1])]
    if [_demo_name(Path(d.get("path", ""))) for d in provenance.get("demos", [])] != wanted:
        stale["demos"] = wanted
    return stale


def _demo_name(path: Path) -> str:
    """``noise_0.1/libero_goal_task9.hdf5``, or the file name alone for the default folder."""
    return path.name if path.parent.name == "demos" else f"{path.parent.name}/{path.name}"


def drop_stale_experts(out: Path, log: Callable[[str], None]) -> None:
    """Remove every expert an earlier recipe revision built, its training state and the statistics on it.

    That includes experts of skills the recipe no longer has (revision 3 replaced ``spatial_01``): only
    directories holding an expert checkpoint are touched, nothing else in ``out``.
    """
    from vlamergebench.policies.checkpoint import CONFIG_FILE

    names = {skill.name for skill in SKILLS}
    dropped: list[tuple[Path, str]] = []  # (expert folder, why)
    for config in sorted(out.glob(f"*/{CONFIG_FILE}")):
        if config.parent.name in names or config.parent.name == "base":
            continue
        try:
            role = json.loads(config.read_text()).get("role")
        except (OSError, ValueError):
            continue  # not a checkpoint this build wrote
        if role == "expert":
            dropped.append((config.parent, "not a skill of this revision of the recipe; removing it"))
    for index, skill in enumerate(SKILLS, start=1):
        stale = stale_fields(out / skill.name, index)
        if stale:
            dropped.append(
                (out / skill.name, f"built by another revision of the recipe (now {stale}); rebuilding")
            )
    for expert, why in dropped:
        log(f"expert {expert.name}: {why}")
        shutil.rmtree(expert)
        shutil.rmtree(out / f"{expert.name}.work", ignore_errors=True)
        (out / STATS_FILE).unlink(missing_ok=True)


def needed_demos(out: Path) -> dict[DemoKey, int]:
    """The demonstrations the unfinished training stages still need (a trained base needs none)."""
    from vlamergebench.policies.checkpoint import CONFIG_FILE

    needed = {}
    if not (out / "base" / CONFIG_FILE).is_file():
        needed |= {(suite, task, 0.0): BASE_DEMO_ATTEMPTS for suite, tasks in BASE_TASKS for task in tasks}
    for skill in SKILLS:
        if not (out / skill.name / CONFIG_FILE).is_file():
            needed |= skill_demo_plan(skill)
    return needed


def collect_demos_for(
    out: Path, plan: dict[DemoKey, int], jobs: int, stages: StageLog, log: Callable[[str], None]
) -> None:
    """The missing files of ``plan``, ``jobs`` tasks at a time (each a single-core simulator process)."""
    demos = out / "demos"
    demos.mkdir(parents=True, exist_ok=True)
    todo = [(key, n) for key, n in plan.items() if not demo_path(demos, *key).is_file()]
    if not todo:
        return
    # spawn, not fork: a forked child of a process holding a MuJoCo EGL context hangs creating its own
    with ProcessPoolExecutor(
        max_workers=max(1, jobs), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        futures = {key: pool.submit(_collect_one, key[0], key[1], n, str(demos), key[2]) for key, n in todo}
        for (suite, task, noise), future in futures.items():
            summary, seconds = future.result()
            name = f"demos {suite} task {task}" + (f" noise {noise:g}" if noise else "")
            stages.record(name, seconds, summary)


def skill_record(skill: SkillRecipe, demos: Path) -> dict[str, Any]:
    """The ``skill`` field of an expert's config: its tasks by LIBERO id and instruction."""
    from vlamergebench.policies.demos import DemoFile

    instructions = []
    for task in skill.task_ids:
        with DemoFile(demo_path(demos, skill.suite, task)) as demo:
            instructions.append(demo.instruction)
    return {
        "name": skill.name,
        "suite": skill.suite,
        "task": instructions[0],
        "task_id": skill.task_ids[0],
        "task_ids": list(skill.task_ids),
        "tasks": instructions,
        "env_id": skill.env_id,
    }


def build_default_experts_v2(
    out: str | os.PathLike[str],
    *,
    threads: int | None = None,
    jobs: int = 2,
    measure_success: Callable[[str, Path], Any] | None = None,
    progress: bool = True,
    stop_before: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the v2 recipe into ``out``: demos/, base/, one directory per skill, expert_set.json, stats.json.

    Args:
        out: The expert-set directory (created; finished stages inside it are kept).
        threads: torch CPU threads for training.
        jobs: Demonstration tasks collected in parallel.
        measure_success: ``(method, set path) -> {(skill, task): rate}`` for the acceptance stage (the CLI
            passes evaluation's); None stops before acceptance.
        progress: Show progress bars.
        stop_before: ``base``, ``experts`` or ``acceptance``: stop before that stage (for staged runs).
        log: Where stage messages go.

    Returns:
        The expert-set directory.

    Raises:
        AcceptanceError: an expert misses the own-success bar on one of its tasks (nothing is shipped).
    """
    from vlamergebench.policies.checkpoint import CONFIG_FILE, write_expert_set
    from vlamergebench.policies.registry import make_config
    from vlamergebench.policies.train import TrainConfig, train

    if threads:
        import torch

        torch.set_num_threads(threads)
    out = Path(out)
    demos = out / "demos"
    stages = StageLog(out, log)
    demo_plan()  # checks that no expert task is a base task
    drop_stale_experts(out, log)
    base_first = {key: n for key, n in needed_demos(out).items() if _is_base_task(key)}
    collect_demos_for(out, base_first, jobs, stages, log)
    if stop_before == "base":
        return out
    base = out / "base"
    base_demos = [str(demo_path(demos, suite, task)) for suite, tasks in BASE_TASKS for task in tasks]
    command = "vlamergebench build-default-experts --recipe v2"
    stages.run(
        "base",
        base / CONFIG_FILE,
        lambda: train(
            TrainConfig.from_dict(BASE_TRAIN),
            base_demos,
            base,
            policy=make_config(PRESET),
            command=command,
            progress=progress,
        ),
    )
    if stop_before == "experts":
        return out
    collect_demos_for(out, needed_demos(out), jobs, stages, log)
    for index, skill in enumerate(SKILLS, start=1):
        expert = out / skill.name
        stages.run(
            f"expert {skill.name}",
            expert / CONFIG_FILE,
            lambda expert=expert, skill=skill, index=index: train(
                TrainConfig.from_dict(expert_train_config(index)),
                [str(path) for path in skill_demo_paths(demos, skill)],
                expert,
                base=base,
                skill=skill_record(skill, demos),
                command=command,
                progress=progress,
            ),
        )
    write_expert_set(out, SET_NAME, base, [out / skill.name for skill in SKILLS])
    if stop_before == "acceptance" or measure_success is None:
        return out
    from vlamergebench.experts.acceptance import accept_expert_set

    stages.run(
        "acceptance",
        out / STATS_FILE,
        lambda: accept_expert_set(
            out,
            measure_success=measure_success,
            bar=OWN_SUCCESS_BAR,
            ratio_target=TASK_VECTOR_RATIO_TARGET,
            log=log,
        ),
    )
    return out
