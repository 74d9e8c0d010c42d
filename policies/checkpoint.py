"""The on-disk checkpoint format: a directory of safetensors + JSON (see ``docs/formats.md`` section 3).

A checkpoint separates what merging needs: the shared base VLM, each expert's LoRA factors (and optionally the
folded dense weights), the action expert with queries and proprio projector, the action/proprio normalisation
statistics and the instructions. Only safetensors and JSON are read, so an untrusted checkpoint can never
execute code. Writes are atomic: files go to a temporary sibling directory that is renamed into place, so an
interrupted write never leaves a directory that looks complete.

This module defines the format and whole-file reads/writes. Streaming one tensor at a time (for merging) is
``merge_methods/io.py``; turning tensors into a model is ``policies/model.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "vlamergebench-checkpoint"
FORMAT_VERSION = 1
EXPERT_SET_FORMAT_NAME = "vlamergebench-expert-set"

CONFIG_FILE = "config.json"
VLM_FILE = "vlm.safetensors"
LORA_FILE = "lora.safetensors"
DENSE_FILE = "dense.safetensors"
ACTION_EXPERT_FILE = "action_expert.safetensors"
NORM_STATS_FILE = "norm_stats.json"
INSTRUCTIONS_FILE = "instructions.json"
EXPERT_SET_FILE = "expert_set.json"

ROLES = ("base", "expert")
VLM_PREFIXES = ("vision.", "projector.", "llm.")
ACTION_EXPERT_PREFIXES = ("action_head.", "action_queries.", "proprio_projector.")
LORA_A_SUFFIX = ".lora_A"
LORA_B_SUFFIX = ".lora_B"


class CheckpointError(ValueError):
    """A checkpoint or expert set is malformed; the message names the file, field or tensor."""


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class NormStats:
    """Per-checkpoint normalisation statistics (1st/99th percentiles), as VLA-Adapter's BOUNDS_Q99.

    Attributes:
        action_q01: 1st percentile per action dimension.
        action_q99: 99th percentile per action dimension.
        action_mask: True where the dimension is normalised (the gripper is not, upstream).
        proprio_q01: 1st percentile per proprio dimension.
        proprio_q99: 99th percentile per proprio dimension.
    """

    action_q01: tuple[float, ...]
    action_q99: tuple[float, ...]
    action_mask: tuple[bool, ...]
    proprio_q01: tuple[float, ...]
    proprio_q99: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.action_q01) == len(self.action_q99) == len(self.action_mask)):
            raise CheckpointError(
                f"norm stats: action q01/q99/mask lengths differ "
                f"({len(self.action_q01)}, {len(self.action_q99)}, {len(self.action_mask)})"
            )
        if len(self.proprio_q01) != len(self.proprio_q99):
            raise CheckpointError(
                "norm stats: proprio q01/q99 lengths differ "
                f"({len(self.proprio_q01)}, {len(self.proprio_q99)})"
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``norm_stats.json``."""
        return {
            "action": {
                "q01": list(self.action_q01),
                "q99": list(self.action_q99),
                "mask": list(self.action_mask),
            },
            "proprio": {"q01": list(self.proprio_q01), "q99": list(self.proprio_q99)},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = NORM_STATS_FILE) -> NormStats:
        """Parse the JSON form; a missing field raises naming ``source`` and the field."""
        try:
            action, proprio = data["action"], data["proprio"]
            return cls(
                action_q01=tuple(float(v) for v in action["q01"]),
                action_q99=tuple(float(v) for v in action["q99"]),
                action_mask=tuple(bool(v) for v in action["mask"]),
                proprio_q01=tuple(float(v) for v in proprio["q01"]),
                proprio_q99=tuple(float(v) for v in proprio["q99"]),
            )
        except (KeyError, TypeError) as error:
            raise CheckpointError(f"{source}: missing or malformed field {error}") from None


@dataclass(frozen=True)
class CheckpointDir:
    """A checkpoint directory on disk, with its parsed ``config.json`` (nothing else is read eagerly)."""

    path: Path
    config: Mapping[str, Any]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> CheckpointDir:
        """Read and validate ``config.json`` and check that the role's files exist."""
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(f"{path}: checkpoint directory does not exist")
        config = _read_json(path / CONFIG_FILE)
        where = path / CONFIG_FILE
        if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
            raise CheckpointError(
                f"{where}: field 'format' must be {FORMAT_NAME!r}, got {config.get('format')!r}"
            )
        if config.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: field 'format_version' must be {FORMAT_VERSION}, "
                f"got {config.get('format_version')!r}"
            )
        for key in ("role", "policy", "base_id"):
            if key not in config:
                raise CheckpointError(f"{where}: missing field {key!r}")
        if config["role"] not in ROLES:
            raise CheckpointError(f"{where}: field 'role' must be one of {ROLES}, got {config['role']!r}")
        if config["role"] == "expert" and "lora" not in config:
            raise CheckpointError(
                f"{where}: an expert needs field 'lora': rank, alpha and targets, or null for a dense expert "
                f"(a full fine-tune, whose weights are in {DENSE_FILE})"
            )
        lora = config.get("lora")
        required = [ACTION_EXPERT_FILE, NORM_STATS_FILE, INSTRUCTIONS_FILE]
        if config["role"] == "base":
            required.append(VLM_FILE)
        else:
            required.append(DENSE_FILE if lora is None else LORA_FILE)
        for name in required:
            if not (path / name).is_file():
                dense = config["role"] == "expert" and lora is None
                kind = "dense expert ('lora': null)" if dense else f"{config['role']} checkpoint"
                raise CheckpointError(f"{path}: {kind} lacks {name}")
        if (
            config["role"] == "expert"
            and lora is not None
            and not (
                isinstance(lora, dict)
                and type(lora.get("rank")) is int
                and lora["rank"] >= 1
                and isinstance(lora.get("alpha"), int | float)
                and math.isfinite(lora["alpha"])
            )
        ):
            raise CheckpointError(
                f"{where}: field 'lora' must hold an integer rank >= 1 and a finite alpha, "
                f"got {json.dumps(lora)[:80]}"
            )
        skill = config.get("skill")
        if skill is not None and not (isinstance(skill, dict) and isinstance(skill.get("name"), str)):
            raise CheckpointError(
                f"{where}: field 'skill' must be an object with a text 'name', got {json.dumps(skill)[:80]}"
            )
        return cls(path=path, config=config)

    @property
    def role(self) -> str:
        """``"base"`` or ``"expert"``."""
        return str(self.config["role"])

    @property
    def base_id(self) -> str:
        """The SHA-256 of the base's ``vlm.safetensors`` this checkpoint belongs to."""
        return str(self.config["base_id"])

    @property
    def skill(self) -> str | None:
        """The skill name of an expert (None for a base)."""
        skill = self.config.get("skill")
        return None if skill is None else str(skill["name"])

    @property
    def is_dense_expert(self) -> bool:
        """Whether this is a dense expert: a full fine-tune, its weights in ``dense.safetensors``, no LoRA."""
        return self.role == "expert" and self.config.get("lora") is None

    @property
    def task_vector_file(self) -> str:
        """The file an expert's task vector comes from: ``lora.safetensors``, or a dense expert's weights."""
        return DENSE_FILE if self.is_dense_expert else LORA_FILE

    @property
    def lora_scale(self) -> float:
        """``alpha / rank`` of the expert's LoRA (PEFT convention); a dense expert has none and raises."""
        lora = self.config.get("lora")
        if not lora:
            raise CheckpointError(
                f"{self.path}: a dense expert (full fine-tune, {DENSE_FILE}) has no LoRA factors or scale"
            )
        return float(lora["alpha"]) / float(lora["rank"])

    def file(self, name: str) -> Path:
        """Path of one of the checkpoint's files."""
        return self.path / name

    def has(self, name: str) -> bool:
        """Whether the optional file ``name`` (e.g. ``dense.safetensors``) is present."""
        return (self.path / name).is_file()

    def norm_stats(self) -> NormStats:
        """The parsed ``norm_stats.json``."""
        return NormStats.from_dict(_read_json(self.path / NORM_STATS_FILE), str(self.path / NORM_STATS_FILE))

    def instructions(self) -> list[str]:
        """The instructions the checkpoint was trained on."""
        data = _read_json(self.path / INSTRUCTIONS_FILE)
        if not isinstance(data, list) or not all(isinstance(item, str) for item in data):
            raise CheckpointError(f"{self.path / INSTRUCTIONS_FILE}: expected a JSON list of strings")
        return data


def write_checkpoint(
    path: str | os.PathLike[str],
    config: Mapping[str, Any],
    tensor_files: Mapping[str, Mapping[str, torch.Tensor]],
    norm_stats: NormStats,
    instructions: Sequence[str],
    overwrite: bool = False,
) -> CheckpointDir:
    """Write a checkpoint directory atomically and return it, validated.

    Args:
        path: Destination directory; must not exist unless ``overwrite``.
        config: The ``config.json`` content without ``format``/``format_version`` (added here).
        tensor_files: File name (e.g. ``vlm.safetensors``) -> tensors to store in it.
        norm_stats: Normalisation statistics.
        instructions: Training instructions.
        overwrite: Replace an existing directory.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        full_config = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config}
        for file_name, tensors in tensor_files.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / file_name))
        (tmp / NORM_STATS_FILE).write_text(json.dumps(norm_stats.to_dict(), indent=1))
        (tmp / INSTRUCTIONS_FILE).write_text(json.dumps(list(instructions), indent=1))
        # config.json last: a directory without it is never mistaken for a checkpoint.
        (tmp / CONFIG_FILE).write_text(json.dumps(full_config, indent=1, sort_keys=True))
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointDir.open(path)


@dataclass(frozen=True)
class ExpertSet:
    """An ordered list of experts sharing one base (``docs/formats.md`` section 4).

    Attributes:
        path: The expert-set directory.
        name: The expert set's name.
        base: The shared base checkpoint.
        experts: Expert checkpoints, in admission order.
    """

    path: Path
    name: str
    base: CheckpointDir
    experts: tuple[CheckpointDir, ...]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ExpertSet:
        """Read ``expert_set.json``, open every checkpoint and check that all share the base."""
        path = Path(path)
        manifest_path = path / EXPERT_SET_FILE
        manifest = _read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != EXPERT_SET_FORMAT_NAME:
            raise CheckpointError(f"{manifest_path}: field 'format' must be {EXPERT_SET_FORMAT_NAME!r}")
        for key in ("name", "base", "experts"):
            if key not in manifest:
                raise CheckpointError(f"{manifest_path}: missing field {key!r}")
        if not isinstance(manifest["name"], str):
            raise CheckpointError(f"{manifest_path}: field 'name' must be text, got {manifest['name']!r}")
        if not isinstance(manifest["base"], str):
            raise CheckpointError(
                f"{manifest_path}: field 'base' must be a directory name, got {manifest['base']!r}"
            )
        listed = manifest["experts"]
        if not (isinstance(listed, list) and listed and all(isinstance(item, str) for item in listed)):
            raise CheckpointError(
                f"{manifest_path}: field 'experts' must be a non-empty list of directory names, "
                f"got {json.dumps(listed)[:80]}"
            )
        base = CheckpointDir.open(path / manifest["base"])
        if base.role != "base":
            raise CheckpointError(f"{base.path}: listed as the base but its role is {base.role!r}")
        actual_base_id = file_sha256(base.file(VLM_FILE))
        if actual_base_id != base.base_id:
            raise CheckpointError(
                f"{base.file(VLM_FILE)}: sha256 {actual_base_id} differs from config base_id {base.base_id}"
            )
        experts, seen = [], {}
        for relative in manifest["experts"]:
            expert = CheckpointDir.open(path / relative)
            if expert.role != "expert":
                raise CheckpointError(f"{expert.path}: listed as an expert but its role is {expert.role!r}")
            if expert.base_id != base.base_id:
                raise CheckpointError(
                    f"{expert.path}: trained on base {expert.base_id[:12]}…, "
                    f"but the expert set's base is {base.base_id[:12]}…"
                )
            if expert.skill in seen:
                raise CheckpointError(
                    f"{expert.path}: skill {expert.skill!r} already given by {seen[expert.skill]}"
                )
            seen[expert.skill] = expert.path
            experts.append(expert)
        return cls(path=path, name=str(manifest["name"]), base=base, experts=tuple(experts))

    @property
    def skills(self) -> list[str]:
        """Skill names in admission order."""
        return [str(expert.skill) for expert in self.experts]

    @property
    def id(self) -> str:
        """A content id: hash of the base id and the experts' config and weight hashes, in order."""
        digest = hashlib.sha256(self.base.base_id.encode())
        for expert in self.experts:
            digest.update(json.dumps(dict(expert.config), sort_keys=True).encode())
            digest.update(file_sha256(expert.file(expert.task_vector_file)).encode())
            digest.update(file_sha256(expert.file(ACTION_EXPERT_FILE)).encode())
        return digest.hexdigest()[:16]

    def expert(self, skill: str) -> CheckpointDir:
        """The expert checkpoint of ``skill``."""
        for expert in self.experts:
            if expert.skill == skill:
                return expert
        raise KeyError(f"expert set {self.name!r} has no skill {skill!r}; skills: {self.skills}")


def write_expert_set(
    path: str | os.PathLike[str],
    name: str,
    base: str | os.PathLike[str],
    experts: Sequence[str | os.PathLike[str]],
) -> ExpertSet:
    """Write ``expert_set.json`` (paths relative to ``path``) and return the validated set."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": EXPERT_SET_FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": name,
        "base": os.path.relpath(base, path),
        "experts": [os.path.relpath(expert, path) for expert in experts],
    }
    (path / EXPERT_SET_FILE).write_text(json.dumps(manifest, indent=1))
    return ExpertSet.open(path)
