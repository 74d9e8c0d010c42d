"""The merge-method interface: configs, one-shot and continual methods, and the merged model directory.

How a method is used (``docs/merge_methods.md`` has the long form)::

    method = make_method("ties", keep_fraction=0.1)          # registry name + config overrides
    merged = method.merge(ExpertSet.open("experts/"), "out/ties")   # one-shot: the whole expert set
    merged = MergedModel.open("out/ties")                     # later, or in an evaluator process
    merged.skills                                             # skill names, in expert-set order
    weights = merged.instantiate("libero_object_0")           # SkillWeights: tensors, norm stats, config
    merged.storage.total_bytes, merged.storage.fraction_of_dense_bank
    router = merged.router()                                  # its own router; or merged.router("oracle")

A continual method (``kind == "continual"``) admits experts one at a time and keeps only its declared state,
which *is* its merged directory: ``admit(seen, previous, out)`` reads the newest expert
(``seen.experts[-1]``), the base and the previous merged directory, nothing else, and writes a complete
merged model of every skill seen so far. ``merge(experts, out, snapshot_dir=...)`` runs the admissions in
order and keeps the merged model after each one (``snapshot_dir/<t>-<skill>``), which is what the continual
protocol evaluates.

A merged directory holds ``merged.json`` (the resolved config with every default written out, its hash, the
expert-set id, the skills and the method's own state), ``storage.json`` (the storage manifest), the method's
safetensors, and ``skills/<NN>/norm_stats.json`` per skill. It may reference files of the base checkpoint
(methods that add to the base rather than replace it); those count in its storage.

**Storage** is bytes on disk of everything needed at inference: every file of the merged directory except
``storage.json`` itself (the accounting), plus the referenced base files. It is reported against the *dense
expert bank* (per skill: the base's ``vlm.safetensors``, which has exactly the bytes of a folded expert VLM,
plus the expert's action expert and norm stats) and the *LoRA bank* (the base's ``vlm.safetensors`` once,
plus per skill its LoRA factors, action expert and norm stats).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from tqdm import tqdm
from vlamergebench.merge_methods.io import (
    AtomicDirectory,
    CheckpointIndex,
    ExpertView,
    StreamingSafetensorsWriter,
    TensorFile,
    as_float32,
    check_finite_tensor,
)
from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
    LORA_FILE,
    NORM_STATS_FILE,
    VLM_FILE,
    CheckpointDir,
    CheckpointError,
    ExpertSet,
    NormStats,
)

MERGED_FORMAT = "vlamergebench-merged"
MERGED_FORMAT_VERSION = 1
MERGED_FILE = "merged.json"
STORAGE_FILE = "storage.json"
KINDS = ("one_shot", "continual")

C = TypeVar("C", bound="MethodConfig")


class ConfigError(ValueError):
    """A method config is invalid; the message names the config class and field."""


def _coerce(owner: str, key: str, value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(owner, key, value, option)
            except ConfigError:
                continue
        raise ConfigError(f"{owner}: field {key!r} expects {hint}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{owner}: field {key!r} expects a list, got {value!r}")
        return tuple(_coerce(owner, key, item, args[0]) for item in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{owner}: field {key!r} expects true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{owner}: field {key!r} expects an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{owner}: field {key!r} expects a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{owner}: field {key!r} expects a string, got {value!r}")
        return value
    raise ConfigError(f"{owner}: field {key!r} has an unsupported type {hint}")


@dataclass(frozen=True)
class MethodConfig:
    """Base of every ``<Name>Config``: a JSON round trip rejecting unknown keys and wrong types; a hash."""

    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults included, as JSON-ready values."""
        return {
            field.name: list(value) if isinstance(value := getattr(self, field.name), tuple) else value
            for field in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Build from a mapping; unknown keys and values of the wrong type raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _coerce(cls.__name__, key, value, hints[key]) for key, value in data.items()})

    def hash(self, method: str) -> str:
        """16 hex digits of SHA-256 over the method name and the resolved config."""
        text = json.dumps({"method": method, "config": self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_fraction(owner: str, name: str, value: float, *, open_top: bool = False) -> None:
    """Raise unless ``value`` is in [0, 1] (or [0, 1) with ``open_top``)."""
    if not (0.0 <= value < 1.0 if open_top else 0.0 <= value <= 1.0):
        raise ConfigError(f"{owner}: {name} must be in [0, 1{')' if open_top else ']'}, got {value}")


def check_choice(owner: str, name: str, value: str, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")


@dataclass(frozen=True)
class StoredFile:
    """One file counted in storage: path (relative to the merged dir, or absolute for base files)."""

    path: str
    bytes: int
    component: str


@dataclass(frozen=True)
class Storage:
    """Bytes on disk of a merged model, by file, with the two reference banks."""

    files: tuple[StoredFile, ...]
    dense_bank_bytes: int
    lora_bank_bytes: int

    @property
    def total_bytes(self) -> int:
        """Sum over every counted file."""
        return sum(entry.bytes for entry in self.files)

    @property
    def fraction_of_dense_bank(self) -> float:
        """``total_bytes / dense_bank_bytes``."""
        return self.total_bytes / self.dense_bank_bytes

    @property
    def fraction_of_lora_bank(self) -> float:
        """``total_bytes / lora_bank_bytes``."""
        return self.total_bytes / self.lora_bank_bytes

    def by_component(self) -> dict[str, int]:
        """Bytes per component (``base``, ``shared``, ``skill``, ``router``, ``metadata``)."""
        totals: dict[str, int] = {}
        for entry in self.files:
            totals[entry.component] = totals.get(entry.component, 0) + entry.bytes
        return totals

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of ``storage.json`` (totals and fractions included, for readers without Python)."""
        return {
            "files": [dataclasses.asdict(entry) for entry in self.files],
            "total_bytes": self.total_bytes,
            "dense_bank_bytes": self.dense_bank_bytes,
            "lora_bank_bytes": self.lora_bank_bytes,
            "fraction_of_dense_bank": self.fraction_of_dense_bank,
            "fraction_of_lora_bank": self.fraction_of_lora_bank,
            "by_component": self.by_component(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Storage:
        """Parse ``storage.json``."""
        files = tuple(StoredFile(**entry) for entry in data["files"])
        return cls(
            files=files, dense_bank_bytes=data["dense_bank_bytes"], lora_bank_bytes=data["lora_bank_bytes"]
        )


def bank_bytes(experts: ExpertSet) -> tuple[int, int]:
    """(dense expert bank, LoRA bank) bytes of an expert set, from its files' sizes."""
    vlm = experts.base.file(VLM_FILE).stat().st_size
    per_skill = [
        expert.file(ACTION_EXPERT_FILE).stat().st_size + expert.file(NORM_STATS_FILE).stat().st_size
        for expert in experts.experts
    ]
    lora = sum(expert.file(LORA_FILE).stat().st_size for expert in experts.experts)
    return len(per_skill) * vlm + sum(per_skill), vlm + lora + sum(per_skill)


@dataclass(frozen=True)
class SkillWeights:
    """What the evaluator turns into a policy for one skill.

    Attributes:
        skill: The skill name.
        tensors: Every tensor in the base's namespace (VLM + action expert), LoRA folded, base dtypes.
        norm_stats: The skill's action/proprio normalisation statistics.
        policy_config: The ``VLAConfig`` dict of the base.
    """

    skill: str
    tensors: dict[str, torch.Tensor]
    norm_stats: NormStats
    policy_config: Mapping[str, Any]


def read_all(tensor_file: TensorFile) -> dict[str, torch.Tensor]:
    """Every tensor of a file (for instantiation, which needs a whole skill in memory anyway)."""
    return {name: tensor_file.read(name, check_finite=False) for name in tensor_file.names}


def read_single_model(model: MergedModel) -> dict[str, torch.Tensor]:
    """Tensors of a method that stores one whole model (its ``vlm`` and ``action_expert`` files)."""
    return {**read_all(model.tensor_file(VLM_FILE)), **read_all(model.tensor_file(ACTION_EXPERT_FILE))}


def skill_dir(index: int) -> str:
    """Relative directory of the skill at ``index`` in the expert set (names may not be path-safe)."""
    return f"skills/{index:02d}"


class MergedModel:
    """A merged model directory opened for reading (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> None:
        """Open ``path``; ``base`` overrides the recorded base checkpoint path (its base_id must match)."""
        self.path = Path(path)
        manifest_path = self.path / MERGED_FILE
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(
                f"{manifest_path}: missing: not a (complete) merged model directory"
            ) from None
        if (
            self.manifest.get("format") != MERGED_FORMAT
            or self.manifest.get("format_version") != MERGED_FORMAT_VERSION
        ):
            raise CheckpointError(f"{manifest_path}: not a {MERGED_FORMAT} v{MERGED_FORMAT_VERSION} manifest")
        self.base = CheckpointDir.open(base or self.manifest["base"]["path"])
        if self.base.base_id != self.manifest["base"]["base_id"]:
            raise CheckpointError(
                f"{self.base.path}: base_id {self.base.base_id[:12]}… differs from the merged model's "
                f"{self.manifest['base']['base_id'][:12]}…"
            )
        self._files: dict[str, TensorFile] = {}
        self._method: MergeMethod | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None) -> MergedModel:
        """Open a merged model directory (same as the constructor)."""
        return cls(path, base)

    @property
    def method_name(self) -> str:
        """The registered method name."""
        return str(self.manifest["method"])

    @property
    def config(self) -> dict[str, Any]:
        """The resolved method config, defaults included."""
        return dict(self.manifest["config"])

    @property
    def config_hash(self) -> str:
        """Hash of method name + resolved config."""
        return str(self.manifest["config_hash"])

    @property
    def expert_set_id(self) -> str:
        """Content id of the expert set (of the experts admitted so far, for a continual method)."""
        return str(self.manifest["expert_set"]["id"])

    @property
    def skills(self) -> list[str]:
        """Skill names, in expert-set (admission) order."""
        return list(self.manifest["skills"])

    @property
    def kind(self) -> str:
        """``"one_shot"`` or ``"continual"``."""
        return str(self.manifest["kind"])

    @property
    def state(self) -> dict[str, Any]:
        """The method's own JSON state."""
        return dict(self.manifest["state"])

    @property
    def policy_config(self) -> dict[str, Any]:
        """The base's ``VLAConfig`` dict."""
        return dict(self.manifest["policy"])

    @property
    def own_router(self) -> str | None:
        """Registered name of the method's own router, or None."""
        return self.manifest["router"]

    @property
    def storage(self) -> Storage:
        """The storage manifest (bytes measured on disk when the directory was written)."""
        return Storage.from_dict(json.loads((self.path / STORAGE_FILE).read_text()))

    def skill_index(self, skill: str) -> int:
        """Position of ``skill`` in the expert set; an unknown skill raises listing the known ones."""
        if skill not in self.manifest["skills"]:
            raise KeyError(f"{self.path}: no skill {skill!r}; skills: {self.manifest['skills']}")
        return self.manifest["skills"].index(skill)

    def tensor_file(self, relative: str) -> TensorFile:
        """A safetensors file of the merged directory (headers cached)."""
        if relative not in self._files:
            self._files[relative] = TensorFile(self.path / relative, f"merged model {self.path.name!r}")
        return self._files[relative]

    def base_file(self, name: str) -> TensorFile:
        """A safetensors file of the base checkpoint (headers cached)."""
        key = "base:" + name
        if key not in self._files:
            self._files[key] = TensorFile(self.base.file(name), "base")
        return self._files[key]

    def norm_stats(self, skill: str) -> NormStats:
        """The skill's normalisation statistics."""
        path = self.path / skill_dir(self.skill_index(skill)) / NORM_STATS_FILE
        return NormStats.from_dict(json.loads(path.read_text()), str(path))

    def instructions(self, skill: str) -> list[str]:
        """The instructions the skill's expert was trained on."""
        return list(self.manifest["instructions"][skill])

    @property
    def method(self) -> MergeMethod:
        """The method object rebuilt from the recorded name and config."""
        if self._method is None:
            from vlamergebench.plugins import recorded_method

            # The name comes from a file: made only if this process trusts it (vlamergebench/plugins.py).
            name = recorded_method(self.manifest, str(self.path / MERGED_FILE))
            self._method = make_method(name, **self.config)
        return self._method

    def instantiate(self, skill: str) -> SkillWeights:
        """Full tensors of ``skill`` in the base's namespace, its norm stats and the policy config."""
        self.skill_index(skill)
        tensors = self.method.instantiate(self, skill)
        return SkillWeights(skill, tensors, self.norm_stats(skill), self.policy_config)

    def router(self, name: str | None = None, **kwargs: Any) -> Any:
        """A router over this model's skills: ``name`` from the router registry, default the method's own."""
        from vlamergebench.merge_methods.registry import ROUTERS

        chosen = name or self.own_router
        if chosen is None:
            raise ValueError(
                f"method {self.method_name!r} has no router of its own; name one (e.g. 'oracle')"
            )
        return ROUTERS.make(chosen, model=self, **kwargs)


class MergeMethod(ABC):
    """A registered method: a name, a frozen config, how to write a merged directory and read it back."""

    config_class: ClassVar[type[MethodConfig]]
    kind: ClassVar[str] = "one_shot"
    base_files: ClassVar[tuple[str, ...]] = ()  # base checkpoint files the merged model needs at inference
    norm_stats_from_base: ClassVar[bool] = False  # True only where every skill runs the base's own head

    def __init__(self, name: str, config: MethodConfig) -> None:
        """Bind the registered ``name`` to a validated ``config``."""
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{name}: config must be {self.config_class.__name__}, got {type(config).__name__}"
            )
        self.name = name
        self.config = config

    @abstractmethod
    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """Full tensors of ``skill`` in the base's namespace (VLM + action expert)."""

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
                "config_hash": self.config.hash(self.name),
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
        files = [
            StoredFile(
                str(path.relative_to(work.work)), path.stat().st_size, _component(path.relative_to(work.work))
            )
            for path in sorted(work.work.rglob("*"))
            if path.is_file() and path.name != STORAGE_FILE
        ]
        files += [
            StoredFile(str(experts.base.file(name).resolve()), experts.base.file(name).stat().st_size, "base")
            for name in self.base_files
        ]
        dense_bank, lora_bank = bank_bytes(experts)
        work.write_json(STORAGE_FILE, Storage(tuple(files), dense_bank, lora_bank).to_dict())
        return MergedModel(work.commit())


def _component(relative: Path) -> str:
    if relative.parts[0] == "skills":
        return "skill"
    if relative.name.startswith("router"):
        return "router"
    return "metadata" if relative.suffix == ".json" else "shared"


class OneShotMethod(MergeMethod):
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
        with AtomicDirectory(out, overwrite) as work:
            state = self.write(experts, work, progress)
            return self._finish(work, experts, state)

    @abstractmethod
    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Write the method's tensors into ``work``; return its JSON state for ``merged.json``."""


class ContinualMethod(MergeMethod):
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
        with AtomicDirectory(out, overwrite) as work:
            state = self.write_admission(seen, previous, work, progress)
            return self._finish(work, seen, state)

    @abstractmethod
    def write_admission(
        self, seen: ExpertSet, previous: MergedModel | None, work: AtomicDirectory, progress: bool
    ) -> Mapping[str, Any]:
        """Write the state after admitting ``seen.experts[-1]``; return the JSON state."""

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
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.admissions-", dir=out.parent))
        previous: MergedModel | None = None
        try:
            for count in range(1, len(experts.experts) + 1):
                folder = Path(snapshot_dir) if snapshot_dir is not None else scratch
                target = folder / f"{count:02d}"
                previous = self.admit(
                    prefix(experts, count), previous, target, overwrite=overwrite, progress=progress
                )
            with AtomicDirectory(out, overwrite) as work:
                shutil.copytree(previous.path, work.work, dirs_exist_ok=True)  # type: ignore[union-attr]
                return MergedModel(work.commit())
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def prefix(experts: ExpertSet, count: int) -> ExpertSet:
    """The expert set of the first ``count`` experts (its id is that of the prefix)."""
    return ExpertSet(path=experts.path, name=experts.name, base=experts.base, experts=experts.experts[:count])


def make_method(name: str, **overrides: Any) -> MergeMethod:
    """Build method ``name`` with config ``overrides`` laid over its registered defaults.

    ``name`` is a registered name, an installed plug-in's, or an import path ``package.module:Name`` (which
    the caller vouches for: see ``vlamergebench/plugins.py``).
    """
    from vlamergebench.plugins import load_method_class, resolve_method

    spec = resolve_method(name)
    method_class = load_method_class(name)
    config = method_class.config_class.from_dict({**spec.kwargs, **overrides})
    return method_class(name, config)


# ---- streaming helpers shared by the methods ---------------------------------------------------------------


def target_names(base: CheckpointIndex, views: Sequence[ExpertView]) -> list[str]:
    """VLM tensors that are a LoRA target of at least one expert, in the base file's order."""
    return [name for name in base.file(VLM_FILE).names if any(view.is_target(name) for view in views)]


def stacked_task_vectors(
    views: Sequence[ExpertView], name: str, base_weight: torch.Tensor | None
) -> torch.Tensor:
    """``(T, *shape)`` float32 task vectors of one VLM tensor."""
    return torch.stack([view.task_vector(name, base_weight) for view in views])


def write_vlm(
    path: Path,
    base: CheckpointIndex,
    merged_delta: Callable[[str, torch.Tensor], torch.Tensor],
    targets: Sequence[str],
    progress: bool,
) -> None:
    """Write a whole VLM: base tensors copied, each target ``base + merged_delta(name, base)``, base dtype.

    ``merged_delta`` receives the base weight in float32 and returns a fresh float32 delta (added to in
    place).
    """
    vlm = base.file(VLM_FILE)
    wanted = set(targets)
    specs = [(name, vlm.dtype(name), vlm.shape(name)) for name in vlm.names]
    with StreamingSafetensorsWriter(path, specs) as writer:
        for name in tqdm(vlm.names, desc="merging VLM tensors", disable=not progress, leave=False):
            if name not in wanted:
                writer.copy_from(name, vlm)
                continue
            weight = vlm.read(name)
            base_float = as_float32(weight)
            merged = merged_delta(name, base_float).add_(base_float)
            check_finite_tensor(merged, f"merged tensor {name!r}")
            writer.write(name, merged.to(weight.dtype))


def write_action_expert(
    path: Path, base: CheckpointIndex, views: Sequence[ExpertView], names: Sequence[str] | None = None
) -> None:
    """Write the uniform average of the experts' action-expert tensors (all, or ``names``), in base dtype.

    The action expert has no pretrained base to take task vectors against (MergeVLA ``weighted_average``).
    """
    reference = base.file(ACTION_EXPERT_FILE)
    chosen = reference.names if names is None else list(names)
    specs = [(name, reference.dtype(name), reference.shape(name)) for name in chosen]
    with StreamingSafetensorsWriter(path, specs) as writer:
        for name in chosen:
            total = sum(view.action_expert(name).float() for view in views)
            writer.write(name, (total / len(views)).to(reference.dtype(name)))  # type: ignore[operator]


def copy_action_expert(path: Path, view: ExpertView, names: Sequence[str]) -> None:
    """Write the named tensors of one expert's action expert, unchanged."""
    source = view.index.file(ACTION_EXPERT_FILE)
    with StreamingSafetensorsWriter(path, [(n, source.dtype(n), source.shape(n)) for n in names]) as writer:
        for name in names:
            writer.copy_from(name, source)
