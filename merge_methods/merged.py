"""The merged model directory: how it is written (manifest and storage accounting) and read back.

A merged directory holds ``merged.json`` (the resolved config with every default written out, its hash, the
expert-set id, the skills and the method's own state), ``storage.json`` (the storage manifest), the method's
safetensors, and ``skills/<NN>/norm_stats.json`` per skill. It may reference files of the base checkpoint
(methods that add to the base rather than replace it); those count in its storage.

**Storage** is bytes on disk of everything needed at inference: every file of the merged directory except
``storage.json`` itself (the accounting), plus the referenced base files. It is reported against the *dense
expert bank* (per skill: the base's ``vlm.safetensors``, which has exactly the bytes of a folded expert VLM,
plus the expert's action expert and norm stats) and the *LoRA bank* (the base's ``vlm.safetensors`` once,
plus per skill its LoRA factors, action expert and norm stats; a dense expert counts its ``dense.safetensors``
in place of the factors). **Parameters** are the tensor elements in the same counted files (safetensors
headers read, no tensor loaded): bytes depend on the dtype, parameters do not. A one-shot method evaluated
under the continual protocol must keep every expert seen so far to re-merge: :func:`kept_expert_bytes` and
:func:`kept_expert_parameters` are that cost. All storage accounting lives here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from vlamergebench.merge_methods.io import TensorFile
from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
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


class Instantiates(Protocol):
    """What a merged model needs of its method (named, not imported: the method bases import this module)."""

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """Full tensors of ``skill`` in the base's namespace (VLM + action expert)."""
        ...


@dataclass(frozen=True)
class StoredFile:
    """One file counted in storage: path (relative to the merged dir, or absolute for base files)."""

    path: str
    bytes: int
    component: str
    parameters: int = 0


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
    def parameters(self) -> int:
        """Tensor elements over every counted safetensors file."""
        return sum(entry.parameters for entry in self.files)

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
            "parameters": self.parameters,
            "dense_bank_bytes": self.dense_bank_bytes,
            "lora_bank_bytes": self.lora_bank_bytes,
            "fraction_of_dense_bank": self.fraction_of_dense_bank,
            "fraction_of_lora_bank": self.fraction_of_lora_bank,
            "by_component": self.by_component(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Storage:
        """Parse ``storage.json`` (one written before parameters were counted reads as 0 parameters)."""
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
    lora = sum(expert.file(expert.task_vector_file).stat().st_size for expert in experts.experts)
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


# What a reader takes from merged.json, with the JSON types each field must have (None: null allowed).
MANIFEST_FIELDS: dict[str, Any] = {
    "method": str,
    "kind": str,
    "config": dict,
    "config_hash": str,
    "router": (str, type(None)),
    "expert_set": {"id": str},
    "base": {"path": str, "base_id": str},
    "skills": list,
    "instructions": dict,
    "policy": dict,
    "state": dict,
}
_JSON_NAMES = {str: "text", dict: "an object", list: "a list", type(None): "null"}


def _check_fields(data: Mapping[str, Any], fields: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Raise :class:`CheckpointError` naming the first of ``fields`` that ``data`` lacks or mistypes."""
    for name, expected in fields.items():
        field_name = f"{prefix}{name}"
        if name not in data:
            raise CheckpointError(f"{where}: missing field {field_name!r}")
        if isinstance(expected, Mapping):
            expected, nested = dict, expected
        else:
            nested = None
        kinds = expected if isinstance(expected, tuple) else (expected,)
        if not isinstance(data[name], kinds):
            wanted = " or ".join(_JSON_NAMES[kind] for kind in kinds)
            raise CheckpointError(f"{where}: field {field_name!r} must be {wanted}, got {data[name]!r:.80}")
        if nested is not None:
            _check_fields(data[name], nested, where, f"{field_name}.")


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
        except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError included
            raise CheckpointError(f"{manifest_path}: not valid JSON ({error})") from None
        if (
            not isinstance(self.manifest, dict)
            or self.manifest.get("format") != MERGED_FORMAT
            or self.manifest.get("format_version") != MERGED_FORMAT_VERSION
        ):
            raise CheckpointError(f"{manifest_path}: not a {MERGED_FORMAT} v{MERGED_FORMAT_VERSION} manifest")
        _check_fields(self.manifest, MANIFEST_FIELDS, str(manifest_path))
        self.base = CheckpointDir.open(base or self.manifest["base"]["path"])
        if self.base.base_id != self.manifest["base"]["base_id"]:
            raise CheckpointError(
                f"{self.base.path}: base_id {self.base.base_id[:12]}… differs from the merged model's "
                f"{self.manifest['base']['base_id'][:12]}…"
            )
        self._files: dict[str, TensorFile] = {}
        self._method: Instantiates | None = None

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
        """Hash of the resolved config, as the results store records it."""
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
    def method(self) -> Instantiates:
        """The method object rebuilt from the recorded name and config."""
        from vlamergebench.merge_methods.registry import make_method
        from vlamergebench.plugins import recorded_method

        if self._method is None:
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


def kept_expert_bytes(experts: ExpertSet) -> int:
    """Bytes of the experts a one-shot method keeps to re-merge under the continual protocol."""
    return sum(
        expert.file(name).stat().st_size
        for expert in experts.experts
        for name in (expert.task_vector_file, ACTION_EXPERT_FILE, NORM_STATS_FILE)
    )


def kept_expert_parameters(experts: ExpertSet) -> int:
    """Tensor elements of the experts a one-shot method keeps to re-merge under the continual protocol."""
    return sum(
        parameter_count(expert.file(name))
        for expert in experts.experts
        for name in (expert.task_vector_file, ACTION_EXPERT_FILE)
    )


def parameter_count(path: Path) -> int:
    """Tensor elements of a safetensors file, from its header alone; 0 for any other file."""
    if path.suffix != ".safetensors":
        return 0
    tensors = TensorFile(path, owner=str(path))
    return sum(math.prod(tensors.shape(name)) for name in tensors.names)


def measure_storage(directory: Path, experts: ExpertSet, base_files: Sequence[str]) -> Storage:
    """Storage of a merged directory being written: its files (but ``storage.json``) and the base files."""
    files = [
        StoredFile(
            str(path.relative_to(directory)),
            path.stat().st_size,
            _component(path.relative_to(directory)),
            parameter_count(path),
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != STORAGE_FILE
    ]
    files += [
        StoredFile(
            str(experts.base.file(name).resolve()),
            experts.base.file(name).stat().st_size,
            "base",
            parameter_count(experts.base.file(name)),
        )
        for name in base_files
    ]
    dense_bank, lora_bank = bank_bytes(experts)
    return Storage(tuple(files), dense_bank, lora_bank)


def _component(relative: Path) -> str:
    if relative.parts[0] == "skills":
        return "skill"
    if relative.name.startswith("router"):
        return "router"
    return "metadata" if relative.suffix == ".json" else "shared"
