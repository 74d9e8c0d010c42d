"""LiNeS (``lines_ta``, ``lines_ties``): scale the merged task vector linearly with layer depth.

Paper: Wang et al., "LiNeS: Post-training Layer Scaling Prevents Forgetting and Enhances Model Merging", ICLR
2025, arXiv:2410.17146. Code: ``wang-kee/LiNeS`` (``src/eval/eval.py``: ``LiNeS_scaling``;
``src/eval/aggregation.py``: the L1 norms).

On top of a merge rule (``base_merge``: TA's sum or TIES, with their own defaults), per VLM target::

    tau_MTL   = sum_t tau_t (TA) or TIES(tau_1..T)          (the base method's merged vector)
    alpha     = (1 / T) ||sum_t tau_t||_1 / ||tau_MTL||_1   (L1 over every target: a first pass)
    lambda(l) = alpha + beta * l / (L - 1)                  (l = block index, L = blocks in its stack)
    W         = W_0 + lambda(l) * tau_MTL                   (tensors outside blocks get alpha)

For TA, alpha = 1/T exactly. Depth: the VLM has stacks of blocks (``vision.*.blocks.<i>``,
``llm.layers.<i>``);
each tensor is scaled by its index within its own stack (the code matches ``.<i>.`` against one encoder's
block count); the projector and other tensors outside a stack get alpha. The action expert has no base and is
averaged, as in TA.

Defaults and sources: ``beta = 0.5``: the code picks beta on validation data (TA: 0.1..1.0; TIES: 0.1..1.5);
without validation data we pin the middle of TA's range (not tuned). TIES: keep 0.2 global, disjoint mean (the
code's ``ties`` with k = 20, ``dis-mean``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import OneShotMethod, TaskVectors
from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.io import AtomicDirectory, open_views, reads_base
from vlamergebench.merge_methods.merged import MergedModel, read_single_model
from vlamergebench.merge_methods.writers import target_names, write_action_expert, write_vlm
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

_BLOCK = re.compile(r"^(.*?\.(?:blocks|layers))\.(\d+)\.")


@dataclass(frozen=True)
class LinesConfig(MethodConfig):
    """LiNeS parameters.

    Attributes:
        base_merge: "ta" (sum) or "ties" (global top-k, elect, disjoint mean).
        beta: Extra scale of the deepest block over the first (0.5: middle of the code's TA sweep).
        keep_fraction: TIES trim (0.2: the code's k = 20).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    base_merge: str = "ta"
    beta: float = 0.5
    keep_fraction: float = 0.2
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "base_merge", self.base_merge, ("ta", "ties"))
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def block_depths(names: Sequence[str]) -> dict[str, float]:
    """``l / (L - 1)`` per tensor inside a stack of blocks (0 for a one-block stack); absent elsewhere."""
    indices = {name: (match.group(1), int(match.group(2))) for name in names if (match := _BLOCK.match(name))}
    blocks: dict[str, int] = {}
    for stack, index in indices.values():
        blocks[stack] = max(blocks.get(stack, 0), index + 1)
    return {name: index / max(blocks[stack] - 1, 1) for name, (stack, index) in indices.items()}


def lines_alpha(summed_l1: float, merged_l1: float, tasks: int) -> float:
    """``(1 / T) ||sum_t tau_t||_1 / ||tau_MTL||_1`` (1/T when the merged vector is empty)."""
    return summed_l1 / merged_l1 / tasks if merged_l1 > 0 else 1.0 / tasks


def layer_scale(alpha: float, beta: float, depth: float | None) -> float:
    """lambda(l) = alpha + beta * depth, alpha outside the stacks."""
    return alpha if depth is None else alpha + beta * depth


class Lines(OneShotMethod[LinesConfig]):
    """One merged model: the base method's tau_MTL scaled by depth."""

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """(TIES thresholds,) a norm pass, then the scaled merge pass."""
        config: LinesConfig = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)
        vlm, targets = base.file(VLM_FILE), target_names(base, views)
        thresholds = None
        if config.base_merge == "ties" and config.keep_fraction < 1.0:
            thresholds = ops.global_thresholds(base, views, targets, config.keep_fraction, progress)

        def merged_task_vector(name: str, weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            stacked = TaskVectors(name, weight, views).stacked()
            summed = stacked.sum(dim=0)
            if config.base_merge == "ta":
                return summed, summed
            return summed, ops.ties_delta(stacked, thresholds, config.keep_fraction, "mean")

        summed_l1 = merged_l1 = 0.0
        for name in targets:
            summed, merged = merged_task_vector(name, vlm.read(name) if reads_base(views) else None)
            summed_l1 += float(summed.abs().double().sum())
            merged_l1 += float(merged.abs().double().sum())
        alpha = lines_alpha(summed_l1, merged_l1, len(views))
        depths = block_depths(vlm.names)

        def delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            return merged_task_vector(name, weight)[1].mul_(layer_scale(alpha, config.beta, depths.get(name)))

        write_vlm(work.file(VLM_FILE), base, delta, targets, progress)
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return {"alpha": alpha, "beta": config.beta}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The one merged model."""
        return read_single_model(model)
