"""Reference points every merge is read against: ``base``, ``expert_bank`` and ``lora_bank``.

- ``base``: no expert at all. Every skill runs the base policy with its own (multi-task) head and its own
  normalisation statistics. Storage: the base.
- ``expert_bank``: every expert kept whole, as a dense folded VLM plus its action expert; instantiating a
  skill returns that expert exactly. The upper bound on success, and by construction ~100% of the dense expert
  bank.
- ``lora_bank``: the shared base plus each expert's LoRA factors, action expert and norm stats. Lossless with
  an oracle (instantiating folds ``W + (alpha / rank) B A`` exactly as ``expert_bank`` does, bit for bit), and
  ~100% of the LoRA bank: the storage baseline that CARVE's and MergeVLA's papers never show
  (``research/merge-methods.md`` section 0, item 5).

Both banks need the skill at inference (an oracle or a router); none has a router of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import OneShotMethod
from vlamergebench.merge_methods.config import MethodConfig
from vlamergebench.merge_methods.io import AtomicDirectory, CheckpointIndex, open_views
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.merge_methods.writers import copy_action_expert, write_vlm
from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
    LORA_FILE,
    VLM_FILE,
    ExpertSet,
)


# The baselines have no parameters; each still has a config class so that every method has a config and a
# hash.
@dataclass(frozen=True)
class BaseOnlyConfig(MethodConfig):
    """``base``: no parameters."""


@dataclass(frozen=True)
class ExpertBankConfig(MethodConfig):
    """``expert_bank``: no parameters."""


@dataclass(frozen=True)
class LoraBankConfig(MethodConfig):
    """``lora_bank``: no parameters."""


class BaseOnly(OneShotMethod[BaseOnlyConfig]):
    """Every skill runs the base checkpoint unchanged (its own head and norm stats)."""

    base_files = (VLM_FILE, ACTION_EXPERT_FILE)
    norm_stats_from_base = True

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Nothing to write beyond the per-skill norm stats (the base's) and the manifest."""
        return {}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The base's tensors."""
        return {**read_all(model.base_file(VLM_FILE)), **read_all(model.base_file(ACTION_EXPERT_FILE))}


class ExpertBank(OneShotMethod[ExpertBankConfig]):
    """Keeps every expert as a whole dense policy (folded VLM + action expert) under ``skills/<NN>/``."""

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Fold each expert's LoRA into a full VLM file and copy its action expert."""
        base, views = open_views(experts.base, experts.experts, "lora")
        for index, view in enumerate(views):
            folder = skill_dir(index)
            write_vlm(
                work.file(f"{folder}/{VLM_FILE}"),
                base,
                lambda name, weight, view=view: view.task_vector(name, weight),
                [name for name in base.file(VLM_FILE).names if view.is_target(name)],
                progress,
            )
            copy_action_expert(work.file(f"{folder}/{ACTION_EXPERT_FILE}"), view, _action_names(base))
        return {}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The skill's stored policy."""
        folder = skill_dir(model.skill_index(skill))
        return {
            **read_all(model.tensor_file(f"{folder}/{VLM_FILE}")),
            **read_all(model.tensor_file(f"{folder}/{ACTION_EXPERT_FILE}")),
        }


class LoraBank(OneShotMethod[LoraBankConfig]):
    """Keeps the base once and each expert's LoRA factors, action expert and norm stats."""

    base_files = (VLM_FILE,)
    needs_lora_factors = True  # its state is the factors (a dense expert's bank is expert_bank)

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Copy each expert's (validated) LoRA and action-expert files; record each LoRA scale."""
        base, views = open_views(experts.base, experts.experts, "lora")
        scales = {}
        for index, view in enumerate(views):
            folder = skill_dir(index)
            work.file(f"{folder}/{LORA_FILE}").write_bytes(view.checkpoint.file(LORA_FILE).read_bytes())
            copy_action_expert(work.file(f"{folder}/{ACTION_EXPERT_FILE}"), view, _action_names(base))
            scales[view.skill] = view.scale
        return {"lora_scale": scales}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """Base VLM with the skill's LoRA folded in (float32 sum, base dtype), plus its action expert."""
        folder = skill_dir(model.skill_index(skill))
        tensors = read_all(model.base_file(VLM_FILE))
        ops.fold_lora(
            tensors, read_all(model.tensor_file(f"{folder}/{LORA_FILE}")), model.state["lora_scale"][skill]
        )
        tensors.update(read_all(model.tensor_file(f"{folder}/{ACTION_EXPERT_FILE}")))
        return tensors


def _action_names(base: CheckpointIndex) -> list[str]:
    return base.file(ACTION_EXPERT_FILE).names
