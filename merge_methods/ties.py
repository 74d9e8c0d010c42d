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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import MergePass, TaskVectorMethod, TaskVectors
from vlamergebench.merge_methods.config import TaskVectorConfig, check_choice, check_fraction


@dataclass(frozen=True)
class TiesConfig(TaskVectorConfig):
    """TIES parameters (and ``task_vectors``: "lora", the factors, or "dense").

    Attributes:
        keep_fraction: Fraction of each task vector's entries kept by magnitude (0.2: official "topk20").
        topk_scope: "global" (official code, FusionBench) or "per_tensor" (MergeKit).
        reduce: Disjoint "mean" (official "dis-mean") or "sum" (MergeVLA's TIES).
        scale: lambda applied to the merged task vector (1.0: MergeKit default, MergeVLA).
    """

    keep_fraction: float = 0.2
    topk_scope: str = "global"
    reduce: str = "mean"
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_choice(owner, "topk_scope", self.topk_scope, ("global", "per_tensor"))
        check_choice(owner, "reduce", self.reduce, ("mean", "sum"))


class Ties(TaskVectorMethod[TiesConfig]):
    """One merged model from trimmed, sign-elected, disjointly merged task vectors; averaged action expert."""

    def global_keep_fraction(self) -> float | None:
        """``keep_fraction`` with the global top-k scope."""
        return self.config.keep_fraction if self.config.topk_scope == "global" else None

    def merged_delta(self, tau: TaskVectors, run: MergePass) -> torch.Tensor:
        """``scale * TIES(tau_1..T)``: trim, elect, disjoint merge."""
        config = self.config
        return ops.ties_delta(tau.stacked(), run.thresholds, config.keep_fraction, config.reduce).mul_(
            config.scale
        )

    def state(self, run: MergePass) -> Mapping[str, Any]:
        """Each expert's global cutoff (None where nothing is kept), or None per tensor."""
        if run.thresholds is None:
            return {"thresholds": None}
        finite = [value if math.isfinite(value) else None for value in run.thresholds]  # k = 0: nothing kept
        return {"thresholds": dict(zip(run.skills, finite, strict=True))}
