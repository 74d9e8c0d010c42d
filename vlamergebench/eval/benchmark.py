"""``vlamergebench run`` as a library call: expert set -> method -> merged model(s) -> suite -> store.

The shape follows FusionBench's program (a model pool, a method, a task pool, a report), in our nouns: an
:class:`~vlamergebench.policies.checkpoint.ExpertSet`, a registered merge method, the evaluation phases of
the chosen protocol, and the results store in the output directory. Everything that can be wrong with the
inputs (expert set, method name or config, routing, skill selection) raises before the first rollout.

Protocols (DESIGN.md "Protocol"):
    - ``one_shot``: one merged model of all T experts, evaluated on every selected skill (admission step T).
    - ``continual``: after each admission t, the skills admitted so far are evaluated (admission step t). A
      continual method admits experts one at a time (its snapshots); a one-shot method re-merges each prefix
      and, since it must keep every expert it has seen to do so, its storage adds those experts' files.

Resuming: merged directories are reused when they exist with the same method config and expert-set id, and
the store skips finished episodes, so rerunning a killed command continues it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlamergebench.eval.merged import merged_policies, merged_router
from vlamergebench.eval.runner import (
    Contender,
    Evaluation,
    Phase,
    PhaseSummary,
    RunOptions,
    TaskUnit,
    run_evaluations,
)
from vlamergebench.eval.store import PROTOCOLS, ResultsStore, RunRecord, StorageRecord

logger = logging.getLogger(__name__)

# The embedded default expert set ships inside the package (trained by the project's own pipeline).
DEFAULT_EXPERTS = Path(__file__).resolve().parents[1] / "default_experts"
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class BenchmarkConfig:
    """Everything ``vlamergebench run`` needs; ``from_dict`` rejects unknown keys.

    Attributes:
        method: Registered merge-method name.
        method_config: Overrides of the method's registered config (validated by the method's config class).
        experts: Expert-set directory; None is the embedded default (:data:`DEFAULT_EXPERTS`).
        select: Skill or suite names to evaluate; empty means every skill of the expert set.
        episodes_per_task: Episodes per task, on LIBERO's fixed init states 0 .. n-1.
        seeds: Run seeds; each seed is its own run (episode seeds derive from it).
        routing: Routing modes, one run each: ``oracle``, ``method`` (its own router) or a router name.
        protocol: ``one_shot`` or ``continual``; None takes the method's kind.
        out: Output directory (store, merged models, leaderboard).
        workers: Worker processes for rollouts.
        max_steps: Cap on steps per episode; None keeps each env's registered limit.
        image_size: Camera resolution; None takes the policy's input size.
        perturbations: Perturbed variants to evaluate each LIBERO skill on as well (see
            :func:`perturbed_variants`): variant labels (``camera-L3-s0``), axis names (every level and seed
            of that axis), ``L<k>`` (every axis at level k, seed 0) or ``all``; empty: none.
        progress: Show progress bars.
        tokenizer_dir: Local directory of the tokenizer files, for presets with a file-based tokenizer.
        device: Torch device the policies run on in each worker (``cpu``, ``cuda``, ``cuda:1``).
        dtype: The policies' compute dtype (``float32``; ``bfloat16`` on a GPU).
    """

    method: str
    method_config: Mapping[str, Any] = field(default_factory=dict)
    experts: str | None = None
    select: tuple[str, ...] = ()
    episodes_per_task: int = 10
    seeds: tuple[int, ...] = (0,)
    routing: tuple[str, ...] = ("oracle",)
    protocol: str | None = None
    out: str = "runs/default"
    workers: int = 2
    max_steps: int | None = None
    image_size: int | None = None
    perturbations: tuple[str, ...] = ()
    progress: bool = True
    tokenizer_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(
                f"BenchmarkConfig.protocol must be one of {PROTOCOLS} or None, got {self.protocol!r}"
            )
        if self.episodes_per_task < 1 or self.workers < 1 or not self.seeds or not self.routing:
            raise ValueError(
                f"BenchmarkConfig: episodes_per_task, workers >= 1 and seeds, routing non-empty: {self}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.tokenizer_dir is not None and not Path(self.tokenizer_dir).is_dir():
            raise ValueError(f"--tokenizer-dir {self.tokenizer_dir}: not a directory")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchmarkConfig:
        """Build from a mapping; an unknown key raises naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"BenchmarkConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        values = dict(data)
        for name in ("select", "seeds", "routing", "perturbations"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


def perturbed_variants(selection: Sequence[str]) -> list[Any]:
    """The perturbed variants named by ``selection``, in the fixed order of ``VARIANTS``, without repeats.

    An item is a variant label (``camera-L3-s0``), an axis name (all its levels and seeds), ``L<k>`` (every
    axis at level k, seed 0) or ``all``; anything else raises, listing the axes.
    """
    from vlamergebench.envs.perturb import AXES, VARIANTS

    chosen = set()
    for item in selection:
        if item == "all":
            matches = VARIANTS
        elif item in AXES:
            matches = [variant for variant in VARIANTS if variant.axis == item]
        elif item[:1] == "L" and item[1:].isdigit():
            matches = [v for v in VARIANTS if v.level == int(item[1:]) and v.seed == VARIANTS[0].seed]
        else:
            matches = [variant for variant in VARIANTS if variant.label == item]
        if not matches:
            raise ValueError(
                f"--perturbations item {item!r}: expected a variant label such as 'camera-L3-s0', an axis "
                f"({', '.join(AXES)}), L1..L5 or 'all'"
            )
        chosen |= {variant.label for variant in matches}
    return [variant for variant in VARIANTS if variant.label in chosen]


def _perturbed_env_id(suite: str, where: str) -> str:
    from vlamergebench.envs import LIBERO_PERTURBED_IDS

    if suite not in LIBERO_PERTURBED_IDS:
        raise ValueError(f"{where}: suite {suite!r} has no perturbed variant (LIBERO spatial/object/goal/10)")
    return LIBERO_PERTURBED_IDS[suite]


def skill_tasks(skill: Mapping[str, Any], where: str) -> list[tuple[int, str]]:
    """``(LIBERO task id, task name)`` of every task of a skill record, in order.

    A single-task skill gives ``task_id`` (named by ``task``); a suite-like skill lists ``task_ids`` with
    their names in ``tasks`` (same length).
    """
    if skill.get("task_ids") is None:
        return [(int(skill["task_id"]), str(skill.get("task") or f"task_{skill['task_id']}"))]
    ids, names = skill["task_ids"], skill.get("tasks")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"{where}: skill.task_ids must be a non-empty list of task ids, got {ids!r}")
    if names is None:
        names = [f"task_{i}" for i in ids]
    if not isinstance(names, list) or len(names) != len(ids) or len(set(names)) != len(names):
        raise ValueError(f"{where}: skill.tasks must list {len(ids)} distinct task names, got {names!r}")
    return [(int(i), str(name)) for i, name in zip(ids, names, strict=True)]


def task_units(
    experts: Any, select: Sequence[str], image_size: int, perturbations: Sequence[str] = ()
) -> list[TaskUnit]:
    """One unit per task of each expert (skill), in admission order, keeping those named in ``select``.

    ``select`` names skills or suites.

    With ``perturbations``, each kept skill also gets one unit per perturbed variant (after its clean unit).
    """
    variants = perturbed_variants(perturbations)
    units, known = [], set()
    for expert in experts.experts:
        skill = expert.config.get("skill") or {}
        missing = [key for key in ("name", "suite", "task_id", "env_id") if skill.get(key) is None]
        if missing:
            raise ValueError(f"{expert.path}/config.json: skill lacks {missing}; evaluation needs its env")
        known |= {skill["name"], skill["suite"]}
        if select and skill["name"] not in select and skill["suite"] not in select:
            continue
        for task_id, task in skill_tasks(skill, f"{expert.path}/config.json"):
            kwargs = {"task": task_id, "image_size": image_size}
            units.append(TaskUnit(skill["name"], skill["suite"], task, skill["env_id"], kwargs))
            if variants:
                perturbed_id = _perturbed_env_id(skill["suite"], f"{expert.path}/config.json")
                for variant in variants:
                    units.append(
                        TaskUnit(
                            skill["name"],
                            skill["suite"],
                            task,
                            perturbed_id,
                            {**kwargs, "variant": variant.label},
                            variant=variant.label,
                            perturbation_axis=variant.axis,
                            perturbation_level=str(variant.level),
                        )
                    )
    unknown = sorted(set(select) - known)
    if unknown:
        raise ValueError(
            f"--select names {unknown}, not a skill or suite of the expert set ({sorted(known)})"
        )
    return units


def _merged(method: Any, experts: Any, directory: Path, progress: bool) -> Any:
    """The merged model of ``experts`` in ``directory``: reused if it matches, else (re)written."""
    from vlamergebench.merge_methods.base import MergedModel

    if (directory / "merged.json").is_file():
        model = MergedModel.open(directory)
        if _same_merge(model, method, experts):
            return model
        logger.info("%s holds another merge; rewriting it", directory)
    return method.merge(experts, directory, overwrite=True, progress=progress)


def _kept_expert_bytes(experts: Any) -> int:
    from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, LORA_FILE, NORM_STATS_FILE

    return sum(
        e.file(n).stat().st_size
        for e in experts.experts
        for n in (LORA_FILE, ACTION_EXPERT_FILE, NORM_STATS_FILE)
    )


def models_per_step(
    method: Any, experts: Any, protocol: str, out: Path, progress: bool
) -> list[tuple[int, Any, int]]:
    """``(admission step, merged model, extra stored bytes)`` for every phase of ``protocol``."""
    from vlamergebench.merge_methods.base import prefix

    name = f"{path_safe(method.name)}-{method.config.hash(method.name)}"
    total = len(experts.experts)
    if protocol == "one_shot":
        return [(total, _merged(method, experts, out / "merged" / name, progress), 0)]
    steps = []
    snapshots = out / "merged" / f"{name}-continual"
    if method.kind == "continual":
        previous = None
        for t in range(1, total + 1):
            seen, directory = prefix(experts, t), snapshots / f"{t:02d}"
            model = _reuse(directory, method, seen)
            if model is None:
                model = method.admit(seen, previous, directory, overwrite=True, progress=progress)
            steps.append((t, model, 0))
            previous = model
        return steps
    for t in range(1, total + 1):
        seen = prefix(experts, t)
        steps.append((t, _merged(method, seen, snapshots / f"{t:02d}", progress), _kept_expert_bytes(seen)))
    return steps


def _reuse(directory: Path, method: Any, seen: Any) -> Any:
    from vlamergebench.merge_methods.base import MergedModel

    if not (directory / "merged.json").is_file():
        return None
    model = MergedModel.open(directory)
    return model if _same_merge(model, method, seen) else None


def _same_merge(model: Any, method: Any, experts: Any) -> bool:
    """Whether ``model`` is what ``method`` would write for ``experts`` (same config, set and method code)."""
    from vlamergebench.plugins import method_source

    recorded = model.manifest.get("method_source")
    return (
        model.config_hash == method.config.hash(method.name)
        and model.expert_set_id == experts.id
        and (recorded is None or recorded == method_source(method.name))
    )


def storage_record(run_id: str, step: int, model: Any, kept_bytes: int) -> StorageRecord:
    """The store's storage row from a merged model's own accounting (plus experts a method must keep)."""
    storage = model.storage
    breakdown = storage.by_component()
    if kept_bytes:
        breakdown["kept experts"] = kept_bytes
    return StorageRecord(
        run_id,
        step,
        storage.total_bytes + kept_bytes,
        storage.dense_bank_bytes,
        storage.lora_bank_bytes,
        breakdown=breakdown,
    )


def run_benchmark(config: BenchmarkConfig) -> list[PhaseSummary]:
    """Merge, evaluate every phase x routing x seed with one pool of workers, store every episode.

    Returns:
        One summary per evaluation (run x admission step).
    """
    from vlamergebench.merge_methods.base import make_method
    from vlamergebench.merge_methods.registry import ROUTERS
    from vlamergebench.plugins import method_metadata
    from vlamergebench.policies.checkpoint import ExpertSet

    experts_dir = Path(config.experts) if config.experts else DEFAULT_EXPERTS
    if not (experts_dir / "expert_set.json").is_file():
        raise FileNotFoundError(f"{experts_dir}: no expert_set.json here (pass --experts DIR)")
    experts = ExpertSet.open(experts_dir)
    method = make_method(config.method, **dict(config.method_config))
    protocol = config.protocol or method.kind
    own_router = method_metadata(config.method)["router"]
    for mode in config.routing:
        if mode == "method" and own_router is None:
            raise ValueError(
                f"method {config.method!r} has no router of its own; use oracle or a router name"
            )
        if mode not in ("oracle", "method"):
            ROUTERS.spec(mode)  # an unknown router raises, listing the registered ones
    image_size = config.image_size or int(experts.base.config["policy"]["vision"]["image_size"])
    units = task_units(experts, config.select, image_size, config.perturbations)
    out = Path(config.out)
    models = models_per_step(method, experts, protocol, out, config.progress)
    options = RunOptions(workers=config.workers, max_steps=config.max_steps, progress=config.progress)
    evaluations = []
    with ResultsStore.open(out) as store:
        for mode in config.routing:
            router = None if mode == "oracle" else (own_router if mode == "method" else mode)
            for seed in config.seeds:
                run = RunRecord.create(
                    method=config.method,
                    method_config=method.config.to_dict(),
                    expert_set_id=experts.id,
                    skills=experts.skills,
                    protocol=protocol,
                    routing_mode=mode if mode in ("oracle", "method") else "named",
                    router=router,
                    run_seed=seed,
                    settings=run_settings(config, image_size),
                )
                store.register_run(run)
                for step, model, kept in models:
                    store.add_storage(storage_record(run.run_id, step, model, kept))
                    phase_units = tuple(u for u in units if u.skill in experts.skills[:step])
                    if phase_units:
                        factory = None
                        if router is not None:
                            factory = merged_router(model.path, router, config.method, config.tokenizer_dir)
                        policies = merged_policies(
                            model.path,
                            config.method,
                            tokenizer_dir=config.tokenizer_dir,
                            device=config.device,
                            dtype=config.dtype,
                        )
                        contender = Contender(policies, factory)
                        evaluations.append(
                            Evaluation(run, Phase(step, phase_units, config.episodes_per_task), contender)
                        )
        return run_evaluations(store, evaluations, options, label=f"{config.method} ({protocol})")


def run_settings(config: BenchmarkConfig, image_size: int) -> dict[str, Any]:
    """Settings that are part of a run's identity; device and dtype only where not the CPU float32 default."""
    settings: dict[str, Any] = {"max_steps": config.max_steps, "image_size": image_size}
    if (config.device, config.dtype) != ("cpu", "float32"):
        settings.update(device=config.device, dtype=config.dtype)
    return settings


def path_safe(name: str) -> str:
    """``name`` with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^\w.-]", "_", name)


def default_out(method: str) -> str:
    """``runs/<method>``: the output directory when none is given (an import path's ``:`` becomes ``_``)."""
    return os.path.join("runs", path_safe(method))
