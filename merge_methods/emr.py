"""EMR-Merging (``emr``): elect a unified task vector, then per-task masks and rescalers (needs the task).

Paper: Huang et al., "EMR-Merging: Tuning-Free High-Performance Model Merging", NeurIPS 2024,
arXiv:2405.17461. Code: ``harveyhuang18/EMR_Merging`` (``merge_vit/src/main_emr_merging.py``); FusionBench
``emr_merging`` (no hyper-parameters).

Per VLM target tensor (float32)::

    sigma   = sign(sum_t tau_t), with -1 where the sum is <= 0     (the code: (mean > 0) * 2 - 1)
    eps     = max_t |tau_t| * 1[tau_t sigma > 0]                  (largest agreeing magnitude)
    tau_uni = sigma * eps
    M_t     = 1[tau_t sigma > 0]                                  (task masks)
    lambda_t = sum_k mean|tau_t,k| / sum_k mean|M_t,k tau_uni,k|  (one scalar per task; k over the targets)
    W_t = W_0 + lambda_t * M_t * tau_uni

Rescalers need sums over every tensor, so they are accumulated during the one pass that writes tau_uni and
the masks, and stored in ``merged.json`` (a few bytes each, counted with the manifest). Stored: tau_uni in the
base dtype, one bit-packed mask per skill and target, the averaged action expert; the base VLM is referenced.
The paper assumes the task is known at test time (no router of its own): run it with ``oracle`` or a named
router. With one expert, M = 1[tau != 0], tau_uni = tau and lambda = 1: the expert is returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import OneShotMethod, TaskVectors
from vlamergebench.merge_methods.config import MethodConfig, check_choice
from vlamergebench.merge_methods.io import (
    AtomicDirectory,
    StreamingSafetensorsWriter,
    open_views,
    reads_base,
)
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.merge_methods.writers import target_names, write_action_expert
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

TAU_UNI_FILE = "tau_uni.safetensors"
MASK_FILE = "masks.safetensors"


@dataclass(frozen=True)
class EmrConfig(MethodConfig):
    """EMR parameters (the method has none of its own).

    Attributes:
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "task_vectors", self.task_vectors, ("lora", "dense"))


def emr_elect(stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau_uni, masks ``(T, ...)`` bool) of a ``(T, ...)`` task-vector stack."""
    sign = torch.where(stacked.sum(dim=0) > 0, 1.0, -1.0)
    masks = (stacked * sign) > 0
    magnitude = (stacked.abs() * masks).amax(dim=0)
    return sign * magnitude, masks


def rescaler_terms(
    stacked: torch.Tensor, tau_uni: torch.Tensor, masks: torch.Tensor
) -> list[tuple[float, float]]:
    """Per task, this tensor's (mean|tau_t|, mean|M_t tau_uni|): the summands of lambda_t."""
    magnitude = tau_uni.abs()
    return [
        (float(tau.abs().mean()), float((magnitude * mask).mean()))
        for tau, mask in zip(stacked, masks, strict=True)
    ]


def rescalers(terms: list[list[tuple[float, float]]]) -> list[float]:
    """lambda_t = sum of the first terms / sum of the second (1 where the second sum is 0)."""
    result = []
    for task_terms in zip(*terms, strict=True):
        numerator, denominator = sum(t[0] for t in task_terms), sum(t[1] for t in task_terms)
        result.append(numerator / denominator if denominator > 0 else 1.0)
    return result


class Emr(OneShotMethod[EmrConfig]):
    """tau_uni + per-skill masks and rescalers; averaged action expert; needs the task."""

    base_files = (VLM_FILE,)

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """One pass: tau_uni, masks and the rescalers' sums."""
        config: EmrConfig = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)
        vlm, targets = base.file(VLM_FILE), target_names(base, views)
        mask_specs = [(n, torch.uint8, ((torch.Size(vlm.shape(n)).numel() + 7) // 8,)) for n in targets]
        tau_writer = StreamingSafetensorsWriter(
            work.file(TAU_UNI_FILE), [(n, vlm.dtype(n), vlm.shape(n)) for n in targets]
        )
        mask_writers = [
            StreamingSafetensorsWriter(work.file(f"{skill_dir(i)}/{MASK_FILE}"), mask_specs)
            for i in range(len(views))
        ]
        terms = []
        for name in targets:
            stacked = TaskVectors(name, vlm.read(name) if reads_base(views) else None, views).stacked()
            tau_uni, masks = emr_elect(stacked)
            tau_writer.write(name, tau_uni.to(vlm.dtype(name)))
            for writer, mask in zip(mask_writers, masks, strict=True):
                writer.write(name, ops.pack_bits(mask))
            terms.append(rescaler_terms(stacked, tau_uni, masks))
        for writer in (tau_writer, *mask_writers):
            writer.close()
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return {"rescalers": dict(zip(experts.skills, rescalers(terms), strict=True))}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``W_0 + lambda_t M_t tau_uni`` on the targets; the averaged action expert."""
        folder = skill_dir(model.skill_index(skill))
        scale = float(model.state["rescalers"][skill])
        tensors = read_all(model.base_file(VLM_FILE))
        tau_file, mask_file = model.tensor_file(TAU_UNI_FILE), model.tensor_file(f"{folder}/{MASK_FILE}")
        for name in tau_file.names:
            weight = tensors[name]
            mask = ops.unpack_bits(mask_file.read(name), weight.shape)
            tensors[name] = (weight.float() + scale * (mask * tau_file.read(name).float())).to(weight.dtype)
        tensors.update(read_all(model.tensor_file(ACTION_EXPERT_FILE)))
        return tensors
