"""TIES-Merging (``ties``, ``ties_per_tensor``): trim, elect sign, disjoint merge.

Paper: Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023,
    arXiv:2306.01708.

Update rule, over the task vectors tau_t of the VLM's LoRA targets (float32)::

    1. trim:   tau_t <- tau_t * 1[|tau_t| >= c_t]     c_t = k-th largest |tau_t|, k = floor(keep_fraction * n)
    2. elect:  gamma = sign(sum_t tau_t)               (0 where the sum is exactly 0)
    3. merge:  tau = mean (or sum) of the tau_t that are non-zero and have sign gamma
    W = W_0 + scale * tau

Tie rules (cutoff ties kept; zero sign sum gives 0) are those of ``ops.py``. The action expert is averaged,
as in Task Arithmetic.

Top-k scope, where implementations disagree:
- ``topk_scope = "global"`` (``ties``): c_t is taken over the whole flattened task vector of expert t, as the
  official code (``src/utils/merge_utils.py``, which flattens the model) and FusionBench do. "Whole" here is
  every VLM tensor that some expert targets (elsewhere tau is 0 by construction). It costs two extra
  streaming passes of magnitude histograms (``ops.MagnitudeHistogram``), never the model in memory.
- ``topk_scope = "per_tensor"`` (``ties_per_tensor``): c_t per tensor, as MergeKit's ``density``.

Defaults and sources: ``keep_fraction = 0.2`` (official "topk20", README); ``reduce = "mean"`` (official
"dis-mean"; MergeVLA's TIES uses "sum"); ``scale = 1.0`` (MergeKit's lambda; MergeVLA's TIES; the official
code sweeps 0.8-2.5 on validation data, FusionBench ships 0.3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import (
    MergedModel,
    MethodConfig,
    OneShotMethod,
    check_choice,
    check_fraction,
    read_single_model,
    stacked_task_vectors,
    target_names,
    write_action_expert,
    write_vlm,
)
from vlamergebench.merge_methods.io import AtomicDirectory, CheckpointIndex, ExpertView, open_views
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet


@dataclass(frozen=True)
class TiesConfig(MethodConfig):
    """TIES parameters.

    Attributes:
        keep_fraction: Fraction of each task vector's entries kept by magnitude (0.2: official "topk20").
        topk_scope: "global" (official code, FusionBench) or "per_tensor" (MergeKit).
        reduce: Disjoint "mean" (official "dis-mean") or "sum" (MergeVLA's TIES).
        scale: lambda applied to the merged task vector (1.0: MergeKit default, MergeVLA).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    keep_fraction: float = 0.2
    topk_scope: str = "global"
    reduce: str = "mean"
    scale: float = 1.0
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_choice(owner, "topk_scope", self.topk_scope, ("global", "per_tensor"))
        check_choice(owner, "reduce", self.reduce, ("mean", "sum"))
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def global_thresholds(
    base: CheckpointIndex,
    views: Sequence[ExpertView],
    targets: Sequence[str],
    keep_fraction: float,
    progress: bool,
) -> list[float]:
    """Per expert, the k-th largest |tau| over all ``targets`` (two streaming histogram passes)."""
    vlm = base.file(VLM_FILE)
    numel = sum(torch.Size(vlm.shape(name)).numel() for name in targets)
    histograms = [ops.MagnitudeHistogram() for _ in views]
    for pass_index in (1, 2):
        if pass_index == 2 and not any(histogram.needs_second_pass for histogram in histograms):
            break
        for name in tqdm(
            targets, desc=f"TIES global top-k, pass {pass_index}", disable=not progress, leave=False
        ):
            weight = vlm.read(name) if views[0].source == "dense" else None
            for view, histogram in zip(views, histograms, strict=True):
                if pass_index == 1 or histogram.needs_second_pass:
                    histogram.add(view.task_vector(name, weight).abs_())
        if pass_index == 1:
            for histogram in histograms:
                histogram.select(ops.keep_count(numel, keep_fraction))
    return [histogram.threshold for histogram in histograms]


def ties_delta(
    stacked: torch.Tensor, thresholds: Sequence[float] | None, keep_fraction: float, reduce: str
) -> torch.Tensor:
    """Trim (by ``thresholds``, else per tensor), elect, disjoint-merge a ``(T, ...)`` task-vector stack."""
    for index in range(stacked.shape[0]):
        if thresholds is not None:
            stacked[index] = ops.trim_below(stacked[index], thresholds[index])
        else:
            stacked[index] = ops.trim_to_top_fraction(stacked[index], keep_fraction)
    return ops.disjoint_merge(stacked, ops.elect_sign(stacked), reduce)


class Ties(OneShotMethod):
    """One merged model from trimmed, sign-elected, disjointly merged task vectors; averaged action expert."""

    config_class = TiesConfig

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Optional global-threshold passes, then one merge pass over the target tensors."""
        config: TiesConfig = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)
        targets = target_names(base, views)
        thresholds = None
        if config.topk_scope == "global" and config.keep_fraction < 1.0:
            thresholds = global_thresholds(base, views, targets, config.keep_fraction, progress)

        def merged_delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            stacked = stacked_task_vectors(views, name, weight)
            return ties_delta(stacked, thresholds, config.keep_fraction, config.reduce).mul_(config.scale)

        write_vlm(work.file(VLM_FILE), base, merged_delta, targets, progress)
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        if thresholds is None:
            return {"thresholds": None}
        finite = [value if math.isfinite(value) else None for value in thresholds]  # k = 0: nothing kept
        return {"thresholds": dict(zip(experts.skills, finite, strict=True))}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The one merged model."""
        return read_single_model(model)
