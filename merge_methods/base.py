"""The method bases: one-shot, continual, and task-vector methods (the driver owns every file).

How a method is used (``docs/merge_methods.md`` has the long form)::

    method = make_method("ties", keep_fraction=0.1)          # registry name + config overrides
    merged = method.merge(ExpertSet.open("experts/"), "out/ties")   # one-shot: the whole expert set
    merged = MergedModel.open("out/ties")                     # later, or in an evaluator process
    merged.skills                                             # skill names, in expert-set order
    weights = merged.instantiate("libero_object_0")           # SkillWeights: tensors, norm stats, config
    merged.storage.total_bytes, merged.storage.fraction_of_dense_bank
    router = merged.router()                                  # its own router; or merged.router("oracle")

A method is a class ``Name(OneShotMethod[NameConfig])``: the type argument is its config class (checked
when the class is defined). A continual method (``kind == "continual"``) admits experts one at a time and
keeps only its declared state, which *is* its merged directory: ``admit(seen, previous, out)`` reads the
newest expert (``seen.experts[-1]``), the base and the previous merged directory, nothing else, and writes a
complete merged model of every skill seen so far. :meth:`ContinualMethod.admissions` is the one admission
loop: ``merge`` and the continual evaluation both call it.

A task-vector method (:class:`TaskVectorMethod`) is only its formula: given the T task vectors of one VLM
tensor it returns the merged delta; the base streams the tensors, writes the VLM and averages the action
expert (which has no pretrained base to take task vectors against).
"""

from __future__ import annotations

import inspect
import os
import shutil
import typing
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.config import MethodConfig, TaskVectorConfig
from vlamergebench.merge_methods.io import (
    AtomicDirectory,
    ExpertView,
    MergeInputError,
    count_non_finite,
    hidden_work_dir,
    lora_factors_needed,
    open_views,
    remove_stale_work,
)
from vlamergebench.merge_methods.merged import (
    MERGED_FILE,
    MERGED_FORMAT,
    MERGED_FORMAT_VERSION,
    STORAGE_FILE,
    MergedModel,
    measure_storage,
    read_single_model,
    skill_dir,
)
from vlamergebench.merge_methods.writers import target_names, write_action_expert, write_vlm
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, NORM_STATS_FILE, VLM_FILE, ExpertSet

KINDS = ("one_shot", "continual")

C = TypeVar("C", bound=MethodConfig)
T = TypeVar("T", bound=TaskVectorConfig)


class MergeMethod(ABC, Generic[C]):
    """A registered method: a name, a frozen config ``C``, how to write a merged directory and read it."""

    config_class: ClassVar[type[MethodConfig]]
    kind: ClassVar[str] = "one_shot"
    base_files: ClassVar[tuple[str, ...]] = ()  # base checkpoint files the merged model needs at inference
    norm_stats_from_base: ClassVar[bool] = False  # True only where every skill runs the base's own head
    # True where the formula or the stored state is the LoRA factors (A, B) themselves, not a task vector:
    # a dense expert (a full fine-tune) is then refused before anything is written.
    needs_lora_factors: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Take ``config_class`` from the type argument (``Ties(OneShotMethod[TiesConfig])``) and check it."""
        super().__init_subclass__(**kwargs)
        for base in cls.__dict__.get("__orig_bases__", ()):
            argument = next(iter(typing.get_args(base)), None)
            if isinstance(argument, type):
                cls.config_class = argument
        if inspect.isabstract(cls):
            return
        config_class = getattr(cls, "config_class", None)
        if not (isinstance(config_class, type) and issubclass(config_class, MethodConfig)):
            raise TypeError(
                f"{cls.__name__}: declare the config, e.g. class {cls.__name__}(OneShotMethod[Config])"
            )
        if cls.kind not in KINDS:
            raise TypeError(f"{cls.__name__}: kind must be one of {KINDS}, got {cls.kind!r}")

    def __init__(self, name: str, config: C) -> None:
        """Bind the registered ``name`` to a validated ``config``."""
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{name}: config must be {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.name = name
        self.config: C = config

    @abstractmethod
    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """Full tensors of ``skill`` in the base's namespace (VLM + action expert)."""

    def check_experts(self, experts: ExpertSet) -> None:
        """Refuse, before any work, an expert this method cannot read: a dense one where it needs LoRA."""
        if self.needs_lora_factors:
            for expert in experts.experts:
                if expert.is_dense_expert:
                    raise MergeInputError(lora_factors_needed(expert, f"merge method {self.name!r}"))

    def _finish(self, work: AtomicDirectory, experts: ExpertSet, state: Mapping[str, Any]) -> MergedModel:
        """Write per-skill norm stats, ``merged.json`` and ``storage.json``, then commit the directory."""
        from vlamergebench.plugins import method_metadata, method_source

        for index, expert in enumerate(experts.experts):
            source = experts.base if self.norm_stats_from_base else expert
            work.file(f"{skill_dir(index)}/{NORM_STATS_FILE}").write_bytes(
                source.file(NORM_STATS_FILE).read_bytes()
            )
        work.write_json(
            MERGED_FILE,
            {
                "format": MERGED_FORMAT,
                "format_version": MERGED_FORMAT_VERSION,
                "method": self.name,
                "kind": self.kind,
                "config": self.config.to_dict(),
                "config_hash": self.config.hash(),
                "method_source": method_source(self.name),
                "router": method_metadata(self.name)["router"],
                "expert_set": {"id": experts.id, "name": experts.name, "path": str(experts.path.resolve())},
                "base": {"path": str(experts.base.path.resolve()), "base_id": experts.base.base_id},
                "skills": experts.skills,
                "instructions": {expert.skill: expert.instructions() for expert in experts.experts},
                "policy": experts.base.config["policy"],
                "base_files": list(self.base_files),
                "state": dict(state),
            },
        )
        work.write_json(STORAGE_FILE, measure_storage(work.work, experts, self.base_files).to_dict())
        return MergedModel(work.commit())


class OneShotMethod(MergeMethod[C]):
    """A method that sees the whole expert set at once."""

    def merge(
        self,
        experts: ExpertSet,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: bool = True,
    ) -> MergedModel:
        """Merge ``experts`` into the directory ``out`` (written atomically) and return it opened."""
        self.check_experts(experts)
        with AtomicDirectory(out, overwrite) as work:
            state = self.write(experts, work, progress)
            return self._finish(work, experts, state)

    @abstractmethod
    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Write the method's tensors into ``work``; return its JSON state for ``merged.json``."""


class ContinualMethod(MergeMethod[C]):
    """Admits experts one at a time; its merged directory is its whole state between admissions."""

    kind = "continual"

    def admit(
        self,
        seen: ExpertSet,
        previous: MergedModel | None,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: bool = True,
    ) -> MergedModel:
        """Admit ``seen.experts[-1]`` on top of ``previous`` (None at first); write the new state to ``out``.

        Only the newest expert, the base and ``previous`` may be read: that is the continual protocol's rule.
        """
        expected = [] if previous is None else previous.skills
        if seen.skills[:-1] != expected:
            raise ValueError(
                f"{self.name}: admitting {seen.skills[-1]!r} after {expected}, but the set is {seen.skills}"
            )
        if previous is not None and (previous.method_name, previous.config) != (
            self.name,
            self.config.to_dict(),
        ):
            raise ValueError(
                f"{self.name}: previous state {previous.path} was written by another method or config"
            )
        self.check_experts(seen)
        with AtomicDirectory(out, overwrite) as work:
            state = self.write_admission(seen, previous, work, progress)
            return self._finish(work, seen, state)

    @abstractmethod
    def write_admission(
        self, seen: ExpertSet, previous: MergedModel | None, work: AtomicDirectory, progress: bool
    ) -> Mapping[str, Any]:
        """Write the state after admitting ``seen.experts[-1]``; return the JSON state."""

    def admissions(
        self,
        experts: ExpertSet,
        snapshot_dir: str | os.PathLike[str],
        *,
        reuse: bool = False,
        overwrite: bool = False,
        progress: bool = True,
    ) -> list[MergedModel]:
        """Admit every expert in order; the model after admission t is ``snapshot_dir/<t>`` (01, 02, ...).

        With ``reuse``, a snapshot already there from this method, config and expert prefix is kept (a resumed
        evaluation); any other snapshot is rewritten when ``overwrite``, else raises.
        """
        models: list[MergedModel] = []
        for count in range(1, len(experts.experts) + 1):
            seen, target = prefix(experts, count), Path(snapshot_dir) / f"{count:02d}"
            model = _matching(target, self, seen) if reuse else None
            if model is None:
                previous = models[-1] if models else None
                model = self.admit(seen, previous, target, overwrite=overwrite, progress=progress)
            models.append(model)
        return models

    def merge(
        self,
        experts: ExpertSet,
        out: str | os.PathLike[str],
        *,
        snapshot_dir: str | os.PathLike[str] | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> MergedModel:
        """Admit every expert in order; the final model goes to ``out``.

        With ``snapshot_dir``, the model after admission t is kept as ``snapshot_dir/<t>`` (t = 01, 02, ...),
        which is what the continual protocol evaluates; without it, intermediate states are deleted once
        superseded.
        """
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out}: already exists (pass overwrite to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_work(out)
        scratch = hidden_work_dir(out, "admissions")
        try:
            folder = Path(snapshot_dir) if snapshot_dir is not None else scratch
            final = self.admissions(experts, folder, overwrite=overwrite, progress=progress)[-1]
            with AtomicDirectory(out, overwrite) as work:
                shutil.copytree(final.path, work.work, dirs_exist_ok=True)
                return MergedModel(work.commit())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def prefix(experts: ExpertSet, count: int) -> ExpertSet:
    """The expert set of the first ``count`` experts (its id is that of the prefix)."""
    return ExpertSet(path=experts.path, name=experts.name, base=experts.base, experts=experts.experts[:count])


def merged_or_rewritten(
    method: OneShotMethod[Any], experts: ExpertSet, directory: Path, progress: bool
) -> MergedModel:
    """The merged model of ``experts`` in ``directory``: reused if this method and config wrote it."""
    model = _matching(directory, method, experts)
    return model or method.merge(experts, directory, overwrite=True, progress=progress)


def _matching(directory: Path, method: MergeMethod[Any], experts: ExpertSet) -> MergedModel | None:
    if not (directory / MERGED_FILE).is_file():
        return None
    from vlamergebench.plugins import method_source

    model = MergedModel.open(directory)
    recorded = model.manifest.get("method_source")  # the same method code: a plug-in upgraded is merged again
    same = (
        model.config_hash == method.config.hash()
        and model.expert_set_id == experts.id
        and (recorded is None or recorded == method_source(method.name))
    )
    return model if same else None


# ---- task-vector methods ------------------------------------------------------------------------------


@dataclass
class TaskVectors:
    """The T experts' task vectors of one VLM tensor, read on demand (stacked, one by one, or summed).

    Attributes:
        name: The tensor's name.
        base: The base weight W_0, float32 (None where the views need no base: LoRA task vectors).
        views: One task-vector view per expert, in expert-set order.
    """

    name: str
    base: torch.Tensor | None
    views: Sequence[ExpertView]

    def stacked(self) -> torch.Tensor:
        """``(T, *shape)`` float32 task vectors."""
        return torch.stack([view.task_vector(self.name, self.base) for view in self.views])

    def each(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(skill, tau_t)`` one expert at a time (one task vector in memory)."""
        for view in self.views:
            yield view.skill, view.task_vector(self.name, self.base)

    def sum(self) -> torch.Tensor:
        """``sum_t tau_t`` as one running sum (never T task vectors in memory); non-finite input raises."""
        dense = self.base is not None and all(view.source == "dense" for view in self.views)
        if dense:  # sum_t W_t - T W_0: one widening per expert, no subtraction each
            terms = (view.weight(self.name, self.base) for view in self.views)
        else:
            terms = (view.task_vector(self.name, self.base, check=False) for view in self.views)
        first = next(terms)
        total = first.clone() if first is self.base else first
        for term in terms:
            total += term
        if dense:
            total.sub_(self.base, alpha=len(self.views))
        if count_non_finite(total):  # every NaN/Inf of every tau reaches the sum: one check, not T
            for view in self.views:  # find the expert at fault (its check raises), else the sum overflowed
                view.task_vector(self.name, self.base)
            raise MergeInputError(f"the task-vector sum of {self.name!r} overflows")
        return total


@dataclass
class MergePass:
    """What one merge of a task-vector method knows beyond the tensor at hand.

    Attributes:
        skills: The skills, in expert-set order.
        thresholds: Per expert, the k-th largest |tau| over the whole task vector, when the method asked for a
            global top-k (:meth:`TaskVectorMethod.global_keep_fraction`); else None.
        tally: Counts a method keeps over the tensors (reported in its state).
    """

    skills: list[str]
    thresholds: list[float] | None = None
    tally: Counter[str] = field(default_factory=Counter)


class TaskVectorMethod(OneShotMethod[T]):
    """One merged model ``W_0 + merged_delta(tau_1..T)`` per VLM target tensor; averaged action expert."""

    def global_keep_fraction(self) -> float | None:
        """The fraction kept by a global top-k of each task vector, if the formula needs its thresholds."""
        return None

    @abstractmethod
    def merged_delta(self, tau: TaskVectors, run: MergePass) -> torch.Tensor:
        """The merged float32 delta of one tensor (fresh: the base weight is added to it in place)."""

    def state(self, run: MergePass) -> Mapping[str, Any]:
        """The JSON state written to ``merged.json``."""
        return {}

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Optional global-threshold passes, one pass over the target tensors, the action-expert average."""
        base, views = open_views(experts.base, experts.experts, self.config.task_vectors)
        targets = target_names(base, views)
        run = MergePass(list(experts.skills))
        keep_fraction = self.global_keep_fraction()
        if keep_fraction is not None and keep_fraction < 1.0:
            run.thresholds = ops.global_thresholds(base, views, targets, keep_fraction, progress)

        def merged_delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            return self.merged_delta(TaskVectors(name, weight, views), run)

        write_vlm(work.file(VLM_FILE), base, merged_delta, targets, progress)
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return self.state(run)

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The one merged model (the same tensors for every skill)."""
        return read_single_model(model)
