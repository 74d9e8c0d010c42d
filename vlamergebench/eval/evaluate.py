"""``vlamergebench eval``: evaluate a model without merging, into the same store as ``run``.

Three kinds of subject, each evaluated on the selected skills of an expert set (which says which env and
task each skill is):

- ``merged``: a merged-model directory (``merged.json`` + its files) written by ``vlamergebench merge`` here
  or elsewhere; its per-skill policies, exactly as ``run`` evaluates them.
- ``checkpoint``: one checkpoint directory in this package's format (docs/formats.md section 3): a dense
  model of the base's architecture merged by another tool (role ``base``), or one expert (role ``expert``,
  its base taken from the expert set). The same policy serves every skill.
- ``policy``: ``package.module:factory``, a callable returning a policy (``reset()``, ``predict(obs)``) or a
  policy source (``skills``, ``policy(skill)``): the protocol of docs/formats.md section 5. Only the caller
  names it (the command line); it is imported in each worker from that name.

Resuming works as in ``run``: a run's id hashes its subject and settings, and finished episodes are skipped.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlamergebench.configs import DEFAULT_EPISODES_PER_TASK
from vlamergebench.eval.devices import resolve_device
from vlamergebench.eval.model_files import local_dir, model_dirs_of
from vlamergebench.eval.policy import PolicyContractError, SingleSkillSource
from vlamergebench.eval.run import (
    DEFAULT_EXPERTS,
    DTYPES,
    KeptExperts,
    check_render_profile,
    check_writable,
    method_code_version,
    out_lock,
    path_safe,
    run_settings,
    storage_record,
    task_units,
)
from vlamergebench.eval.runner import PhaseSummary, run_evaluations
from vlamergebench.eval.sources import merged_model_dirs, merged_policies
from vlamergebench.eval.store import ResultsStore, RunRecord
from vlamergebench.eval.work import Contender, Evaluation, Phase, RunOptions

SUBJECT_KINDS = ("merged", "checkpoint", "policy")


@dataclass(frozen=True)
class EvalConfig:
    """Everything ``vlamergebench eval`` needs.

    Attributes:
        kind: ``merged``, ``checkpoint`` or ``policy``.
        subject: The merged directory, the checkpoint directory, or the ``package.module:factory`` path.
        name: The entry's name on the leaderboard (default: the merged model's method, the checkpoint
            directory's name, or the factory path).
        method: For ``merged``: the method import path the caller vouches for, when the merged model records
            one (``--method``); registered and installed methods need nothing.
        experts: Expert-set directory naming each skill's env; None is the embedded default set.
        select: Skill or suite names to evaluate; empty means all.
        episodes_per_task, seeds, out, workers, max_steps, image_size, render_profile, progress,
        tokenizer_dir, device, dtype, record_videos: As ``RunConfig``.
    """

    kind: str
    subject: str
    name: str | None = None
    method: str | None = None
    experts: str | None = None
    select: tuple[str, ...] = ()
    episodes_per_task: int = DEFAULT_EPISODES_PER_TASK
    seeds: tuple[int, ...] = (0,)
    out: str = "runs/eval"
    workers: int = 1
    max_steps: int | None = None
    image_size: int | None = None
    render_profile: str = "full"
    progress: bool = True
    tokenizer_dir: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    record_videos: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SUBJECT_KINDS:
            raise ValueError(f"EvalConfig.kind must be one of {SUBJECT_KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.episodes_per_task < 1 or self.workers < 1 or not self.seeds:
            raise ValueError(f"EvalConfig: episodes_per_task, workers >= 1 and seeds non-empty: {self}")
        if self.record_videos < 0:
            raise ValueError(f"--record-videos must be >= 0, got {self.record_videos}")
        check_render_profile(self.render_profile)
        object.__setattr__(self, "device", resolve_device(self.device))


def _checkpoint_source(
    path: str, base: str, skills: Sequence[str], tokenizer_dir: str | None, device: str, dtype: str
) -> SingleSkillSource:
    import torch

    from vlamergebench.policies.policy import VLAPolicy

    policy = VLAPolicy.from_checkpoint(
        local_dir(path),
        base=local_dir(base),
        tokenizer_dir=None if tokenizer_dir is None else local_dir(tokenizer_dir),
        dtype=getattr(torch, dtype),
        device=device,
    )
    policy.model.eval()
    return SingleSkillSource(policy, skills)


def load_factory(path: str) -> Any:
    """Import ``package.module:factory`` (a path the caller gave); a failure names the path."""
    from vlamergebench.plugins import is_import_path

    if not is_import_path(path):
        raise ValueError(f"--policy {path!r}: expected package.module:factory")
    module_name, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"--policy {path}: cannot import it ({error}); is its module on PYTHONPATH?"
        ) from None


def _factory_source(path: str, skills: Sequence[str]) -> Any:
    made = load_factory(path)()
    if hasattr(made, "skills") and hasattr(made, "policy"):
        return made
    if callable(getattr(made, "predict", None)) and callable(getattr(made, "reset", None)):
        return SingleSkillSource(made, skills)
    raise PolicyContractError(
        f"--policy {path}: the factory returned {type(made).__name__}, which is neither a policy "
        "(reset, predict) nor a policy source (skills, policy)"
    )


def evaluate(config: EvalConfig) -> list[PhaseSummary]:
    """Evaluate the subject on the selected skills, storing every episode in ``config.out``."""
    experts_dir = Path(config.experts) if config.experts else DEFAULT_EXPERTS
    if not (experts_dir / "expert_set.json").is_file():
        raise FileNotFoundError(f"{experts_dir}: no expert_set.json here (pass --experts DIR)")
    check_writable(Path(config.out))
    with out_lock(Path(config.out)):
        return _evaluate(config, experts_dir)


def _evaluate(config: EvalConfig, experts_dir: Path) -> list[PhaseSummary]:
    from vlamergebench.policies.checkpoint import CheckpointDir, ExpertSet, file_sha256

    experts = ExpertSet.open(experts_dir)
    image_size = config.image_size or int(experts.base.config["policy"]["vision"]["image_size"])
    units = task_units(experts, config.select, image_size, render_profile=config.render_profile)
    skills = sorted({unit.skill for unit in units}, key=experts.skills.index)
    runtime = {"tokenizer_dir": config.tokenizer_dir, "device": config.device, "dtype": config.dtype}
    model = None
    code_version = None
    model_dirs: tuple[str, ...] = ()
    if config.kind == "merged":
        from vlamergebench.merge_methods.merged import MergedModel
        from vlamergebench.plugins import trust_method

        trust_method(config.method)
        model = MergedModel.open(config.subject)
        model.method  # noqa: B018  (refuses an untrusted or missing method before any rollout)
        missing = sorted(set(skills) - set(model.skills))
        if missing:
            raise ValueError(
                f"{config.subject}: the merged model has no skill {missing}; it has {model.skills}"
            )
        name = config.name or model.method_name
        code_version = method_code_version(model.method.name)
        identity = {"merged": model.config_hash, "expert_set": model.expert_set_id, "config": model.config}
        factory: Any = merged_policies(model.path, config.method, **runtime)
        model_dirs = merged_model_dirs(model.path, config.tokenizer_dir)
    elif config.kind == "checkpoint":
        checkpoint = CheckpointDir.open(config.subject)
        if checkpoint.role == "expert" and checkpoint.base_id != experts.base.base_id:
            raise ValueError(f"{config.subject}: an expert of another base than the expert set's")
        name = config.name or Path(config.subject).resolve().name
        weights = "vlm.safetensors" if checkpoint.role == "base" else "lora.safetensors"
        identity = {"checkpoint": file_sha256(checkpoint.file(weights)), "role": checkpoint.role}
        base = str(experts.base.path) if checkpoint.role == "expert" else str(checkpoint.path)
        factory = functools.partial(
            _checkpoint_source, str(checkpoint.path.resolve()), base, tuple(skills), **runtime
        )
        model_dirs = model_dirs_of([checkpoint.path.resolve(), base, config.tokenizer_dir])
    else:
        load_factory(config.subject)  # fails here, naming the path, rather than in every worker
        name = config.name or config.subject
        identity = {"factory": config.subject}
        factory = functools.partial(_factory_source, config.subject, tuple(skills))
    settings = run_settings(config, image_size)
    out = Path(config.out)
    step = len(experts.experts)
    evaluations = []
    with ResultsStore.open(out) as store:
        for seed in config.seeds:
            run = RunRecord.create(
                method=name,
                method_config={"evaluated": config.kind, **identity},
                expert_set_id=experts.id,
                skills=experts.skills,
                protocol="one_shot",
                routing_mode="oracle",
                router=None,
                run_seed=seed,
                settings=settings,
            )
            store.register_run(run)
            if model is not None:
                store.add_storage(storage_record(run.run_id, step, model, KeptExperts()))
            phase = Phase(step, tuple(units), config.episodes_per_task)
            contender = Contender(factory, model_dirs=model_dirs)
            evaluations.append(Evaluation(run, phase, contender, code_version))
        options = RunOptions(workers=config.workers, max_steps=config.max_steps, progress=config.progress,
                             record_videos=config.record_videos, device=config.device)  # fmt: skip
        return run_evaluations(store, evaluations, options, label=f"eval {name}")


def default_eval_out(name: str) -> str:
    """``runs/eval-<name>``: where ``eval`` writes when no ``--out`` is given."""
    return os.path.join("runs", "eval-" + path_safe(name))
