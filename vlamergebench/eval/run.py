"""``vlamergebench run`` as a library call: expert set -> method -> merged model(s) -> suite -> store.

The shape follows FusionBench's program (a model pool, a method, a task pool, a report), in our nouns: an
:class:`~vlamergebench.policies.checkpoint.ExpertSet`, a registered merge method, the evaluation phases of
the chosen protocol, and the results store in the output directory. Everything that can be wrong with the
inputs (expert set, method name or config, routing, skill selection) raises before the first rollout.

Protocols (docs/leaderboards.md):
    - ``one_shot``: one merged model of all T experts, evaluated on every selected skill (admission step T).
    - ``continual``: after each admission t, the skills admitted so far are evaluated (admission step t). A
      continual method admits experts one at a time (its snapshots); a one-shot method re-merges each prefix
      and, since it must keep every expert it has seen to do so, its storage adds those experts' files.

Resuming: merged directories are reused when they exist with the same method config, method code version
(:func:`method_code_version`) and expert-set id, and the store skips finished episodes, so rerunning a
killed command continues it; after the method's code changed, the store refuses to extend a run with
episodes of the old code.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlamergebench.configs import DEFAULT_EPISODES_PER_TASK, from_mapping
from vlamergebench.eval.devices import resolve_device
from vlamergebench.eval.runner import EXECUTORS, PhaseSummary, run_evaluations
from vlamergebench.eval.shards import Shard
from vlamergebench.eval.sources import merged_model_dirs, merged_policies, merged_router
from vlamergebench.eval.store import PROTOCOLS, ResultsStore, RunRecord, StorageRecord
from vlamergebench.eval.work import Contender, Evaluation, Phase, RunOptions, TaskUnit

# The embedded default expert set ships inside the package (trained by the project's own pipeline).
DEFAULT_EXPERTS = Path(__file__).resolve().parents[1] / "default_experts_v2"
DEFAULT_EXPERTS_V1 = Path(__file__).resolve().parents[1] / "default_experts"  # in the repository only
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RunConfig:
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
        render_profile: ``full``, or ``fast``: LIBERO scenes rendered with decimated visual meshes
            (:mod:`vlamergebench.envs.fast_meshes`); part of the run's settings and comparability key.
        perturbations: Perturbed variants to evaluate each LIBERO skill on as well (see
            :func:`perturbed_variants`): variant labels (``camera-L3-s0``), axis names (every level and seed
            of that axis), ``L<k>`` (every axis at level k, seed 0) or ``all``; empty: none.
        progress: Show progress bars.
        shard: ``"i/N"``: run only shard i of N of the episode plan (:mod:`vlamergebench.eval.shards`).
        executor: ``local`` (worker processes) or ``ray`` (Ray actors, ``workers`` of them).
        ray_address: The Ray cluster to join; None: ``RAY_ADDRESS``, else a local one.
        batch_envs: Simulators each worker steps side by side, one policy query per chunk for all of them.
        retry_errors: Also rerun stored episodes that ended in a simulator error.
        tokenizer_dir: Local directory of the tokenizer files, for presets with a file-based tokenizer.
        device: Torch device the policies run on in each worker (``cpu``, ``cuda``, ``cuda:1``, or ``auto``:
            CUDA when this machine has it, else ``cpu``); resolved when the config is made
            (:func:`~vlamergebench.eval.devices.resolve_device`), so ``device`` is always concrete.
        dtype: The policies' compute dtype (``float32``; ``bfloat16`` on a GPU).
        record_videos: Save episodes ``0 .. record_videos - 1`` of every task as MP4 videos under
            ``<out>/videos`` (:mod:`vlamergebench.eval.video`); not part of a run's identity.
    """

    method: str
    method_config: Mapping[str, Any] = field(default_factory=dict)
    experts: str | None = None
    select: tuple[str, ...] = ()
    episodes_per_task: int = DEFAULT_EPISODES_PER_TASK
    seeds: tuple[int, ...] = (0,)
    routing: tuple[str, ...] = ("oracle",)
    protocol: str | None = None
    out: str = "runs/default"
    workers: int = 2
    max_steps: int | None = None
    image_size: int | None = None
    render_profile: str = "full"
    perturbations: tuple[str, ...] = ()
    progress: bool = True
    shard: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    batch_envs: int = 1
    retry_errors: bool = False
    tokenizer_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    record_videos: int = 0

    def __post_init__(self) -> None:
        if self.protocol is not None and self.protocol not in PROTOCOLS:
            raise ValueError(f"RunConfig.protocol must be one of {PROTOCOLS} or None, got {self.protocol!r}")
        if self.episodes_per_task < 1 or self.workers < 1 or not self.seeds or not self.routing:
            raise ValueError(
                f"RunConfig: episodes_per_task, workers >= 1 and seeds, routing non-empty: {self}"
            )
        if self.shard is not None:
            Shard.parse(self.shard)
        if self.batch_envs < 1:
            raise ValueError(f"--batch-envs must be >= 1, got {self.batch_envs}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor {self.executor!r}: expected one of {', '.join(EXECUTORS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        check_render_profile(self.render_profile)
        # the policies run on the actors' machines under Ray, so a CUDA device is not checked on this one
        object.__setattr__(self, "device", resolve_device(self.device, check_here=self.executor != "ray"))
        if self.tokenizer_dir is not None and not Path(self.tokenizer_dir).is_dir():
            raise ValueError(f"--tokenizer-dir {self.tokenizer_dir}: not a directory")
        if self.record_videos < 0:
            raise ValueError(f"--record-videos must be >= 0, got {self.record_videos}")
        if self.record_videos:
            from vlamergebench.eval.video import require_video_support

            require_video_support()  # before anything is merged or run

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "RunConfig") -> RunConfig:
        """Build from a mapping; an unknown key raises naming the known ones."""
        return from_mapping(cls, data, where)


def check_render_profile(profile: str) -> None:
    """Refuse a ``--render-profile`` LIBERO envs do not offer, or cannot here, naming the flag."""
    import importlib.util

    from vlamergebench.envs.fast_meshes import RENDER_PROFILES

    if profile not in RENDER_PROFILES:
        raise ValueError(f"--render-profile {profile!r}: expected one of {', '.join(RENDER_PROFILES)}")
    if profile == "fast" and importlib.util.find_spec("fast_simplification") is None:
        raise ValueError(
            "--render-profile fast needs the fast-simplification library: "
            "pip install 'vlamergebench[fast-render]'"
        )


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


def registered_env_ids() -> frozenset[str]:
    """The ``vlamergebench/*`` ids registered with Gymnasium: the only env ids an expert set may name.

    Gymnasium imports the module of a ``module:id`` id before looking it up, so an id copied from an
    expert's ``config.json`` unchecked would let a downloaded expert set run code.
    """
    import gymnasium as gym

    import vlamergebench.envs  # noqa: F401  (registers the ids)

    return frozenset(key for key in gym.registry if key.startswith("vlamergebench/"))


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
    experts: Any,
    select: Sequence[str],
    image_size: int,
    perturbations: Sequence[str] = (),
    render_profile: str = "full",
) -> list[TaskUnit]:
    """One unit per task of each expert (skill), in admission order, keeping those named in ``select``.

    ``select`` names skills or suites. A ``render_profile`` other than ``full`` goes into every unit's env
    kwargs (so into its simulator's key and every stored episode); an env that has no render profiles raises.

    With ``perturbations``, each kept skill also gets one unit per perturbed variant (after its clean unit).
    An env id that is not one of :func:`registered_env_ids` raises, naming the expert's ``config.json``.
    """
    from vlamergebench.envs import RENDER_PROFILE_IDS

    variants = perturbed_variants(perturbations)
    allowed = registered_env_ids()
    units, known = [], set()
    for expert in experts.experts:
        skill = expert.config.get("skill") or {}
        missing = [key for key in ("name", "suite", "task_id", "env_id") if skill.get(key) is None]
        if missing:
            raise ValueError(f"{expert.path}/config.json: skill lacks {missing}; evaluation needs its env")
        if skill["env_id"] not in allowed:
            raise ValueError(
                f"{expert.path}/config.json: skill.env_id {skill['env_id']!r} is not a registered "
                "vlamergebench env id; expected one listed by 'vlamergebench envs'"
            )
        known |= {skill["name"], skill["suite"]}
        if select and skill["name"] not in select and skill["suite"] not in select:
            continue
        if render_profile != "full" and skill["env_id"] not in RENDER_PROFILE_IDS:
            raise ValueError(
                f"--render-profile {render_profile}: skill {skill['name']!r} runs on {skill['env_id']}, "
                "which has no render profiles (LIBERO envs have them)"
            )
        for task_id, task in skill_tasks(skill, f"{expert.path}/config.json"):
            kwargs: dict[str, Any] = {"task": task_id, "image_size": image_size}
            if render_profile != "full":
                kwargs["render_profile"] = render_profile
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


def method_code_version(name: str) -> str:
    """12 hex digits of SHA-256 over the package version and the source of the method's module.

    Merged directories are named with it and every episode records it, so a fixed method is merged again
    and its new episodes never join a run holding the old ones.
    """
    import hashlib
    import importlib.util

    from vlamergebench.merge_methods.registry import METHODS
    from vlamergebench.provenance import package_versions

    module = importlib.util.find_spec(METHODS.spec(name).entry_point.partition(":")[0])
    source = Path(module.origin).read_bytes() if module is not None and module.origin else b""
    version = package_versions()["vlamergebench"].encode()
    return hashlib.sha256(version + b"\0" + source).hexdigest()[:12]


def models_per_step(
    method: Any, experts: Any, protocol: str, out: Path, progress: bool
) -> list[tuple[int, Any, KeptExperts]]:
    """``(admission step, merged model, what it keeps of the experts)`` for every phase of ``protocol``.

    Merged directories already there from the same method, config, code version and experts are reused (a
    resumed run).
    """
    from vlamergebench.merge_methods.base import merged_or_rewritten, prefix
    from vlamergebench.merge_methods.merged import kept_expert_bytes, kept_expert_parameters

    name = f"{path_safe(method.name)}-{method.config.hash()}-code{method_code_version(method.name)}"
    total = len(experts.experts)
    if protocol == "one_shot":
        return [(total, merged_or_rewritten(method, experts, out / "merged" / name, progress), KeptExperts())]
    snapshots = out / "merged" / f"{name}-continual"
    if method.kind == "continual":
        models = method.admissions(experts, snapshots, reuse=True, overwrite=True, progress=progress)
        return [(t, model, KeptExperts()) for t, model in enumerate(models, start=1)]
    steps = []
    for t in range(1, total + 1):  # a one-shot method re-merges every prefix and keeps the experts to do so
        seen = prefix(experts, t)
        model = merged_or_rewritten(method, seen, snapshots / f"{t:02d}", progress)
        steps.append((t, model, KeptExperts(kept_expert_bytes(seen), kept_expert_parameters(seen))))
    return steps


@dataclass(frozen=True)
class KeptExperts:
    """What a one-shot method keeps of the experts to re-merge under the continual protocol."""

    bytes: int = 0
    parameters: int = 0


def storage_record(run_id: str, step: int, model: Any, kept: KeptExperts) -> StorageRecord:
    """The store's storage row from a merged model's own accounting (plus experts a method must keep).

    A merged directory written before parameters were counted reports none (NULL), not a wrong zero.
    """
    storage = model.storage
    breakdown = storage.by_component()
    if kept.bytes:
        breakdown["kept experts"] = kept.bytes
    return StorageRecord(
        run_id,
        step,
        storage.total_bytes + kept.bytes,
        storage.dense_bank_bytes,
        storage.lora_bank_bytes,
        parameters=storage.parameters + kept.parameters if storage.parameters else None,
        breakdown=breakdown,
    )


def run_command(config: RunConfig) -> list[PhaseSummary]:
    """Merge, evaluate every phase x routing x seed with one pool of workers, store every episode.

    Returns:
        One summary per evaluation (run x admission step).

    Raises:
        ValueError: ``config.out`` is unwritable or held by another run (:func:`out_lock`), or an input is
            wrong; nothing has been merged or run then.
        FileNotFoundError: the expert set has no ``expert_set.json``.
    """
    experts_dir = Path(config.experts) if config.experts else DEFAULT_EXPERTS
    if not (experts_dir / "expert_set.json").is_file():  # before --out is created
        raise FileNotFoundError(f"{experts_dir}: no expert_set.json here (pass --experts DIR)")
    check_writable(Path(config.out))
    with out_lock(Path(config.out)):
        return _run_command(config)


def _run_command(config: RunConfig) -> list[PhaseSummary]:
    from vlamergebench.merge_methods.registry import ROUTERS, make_method
    from vlamergebench.plugins import method_metadata
    from vlamergebench.policies.checkpoint import ExpertSet

    experts = ExpertSet.open(Path(config.experts) if config.experts else DEFAULT_EXPERTS)
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
    units = task_units(experts, config.select, image_size, config.perturbations, config.render_profile)
    out = Path(config.out)
    models = models_per_step(method, experts, protocol, out, config.progress)
    code_version = method_code_version(config.method)
    options = RunOptions(
        workers=config.workers,
        max_steps=config.max_steps,
        progress=config.progress,
        executor=config.executor,
        ray_address=config.ray_address,
        shard=None if config.shard is None else Shard.parse(config.shard),
        batch_envs=config.batch_envs,
        retry_errors=config.retry_errors,
        record_videos=config.record_videos,
        device=config.device,
    )
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
                        dirs = merged_model_dirs(model.path, config.tokenizer_dir)
                        contender = Contender(policies, factory, model_dirs=dirs)
                        phase = Phase(step, phase_units, config.episodes_per_task)
                        evaluations.append(Evaluation(run, phase, contender, code_version))
        return run_evaluations(store, evaluations, options, label=f"{config.method} ({protocol})")


def run_settings(config: Any, image_size: int) -> dict[str, Any]:
    """Settings that are part of a run's identity (of ``run``'s and ``eval``'s configs).

    Device and dtype only where not the CPU float32 default, the render profile only where not ``full``: runs
    under the defaults keep the ids they had before those settings existed.
    """
    settings: dict[str, Any] = {"max_steps": config.max_steps, "image_size": image_size}
    if (config.device, config.dtype) != ("cpu", "float32"):
        settings.update(device=config.device, dtype=config.dtype)
    if config.render_profile != "full":
        settings["render_profile"] = config.render_profile
    return settings


def path_safe(name: str) -> str:
    """``name`` with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``_``."""
    return re.sub(r"[^\w.-]", "_", name)


def check_writable(out: Path) -> None:
    """Create ``out`` and write a file there: an unwritable output fails before any merge or rollout."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(f"--out {out}: cannot write there ({error.strerror or error})") from None


LOCK_FILE = ".vlamergebench-run.lock"


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold ``out`` for one run; a second run on it refuses, naming the holder, instead of racing it.

    The lock is the kernel's (``flock``), so it is released whenever the holder exits, even killed.
    """
    import fcntl
    import socket
    import sys

    out.mkdir(parents=True, exist_ok=True)
    handle = (out / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(
            f"--out {out} is in use by {holder}; wait for that run to finish or give another --out"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {started} ({' '.join(sys.argv)})")
        handle.flush()
        yield
    finally:
        handle.truncate(0)
        handle.close()


def default_out(method: str) -> str:
    """``runs/<method>``: the output directory when none is given (an import path's ``:`` becomes ``_``)."""
    return os.path.join("runs", path_safe(method))
