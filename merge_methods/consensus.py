"""Consensus merging (``consensus_ta``, ``consensus_ties``): keep only weights that several task masks want.

Paper: Wang et al., "Localizing Task Information for Improved Model Merging and Compression", ICML 2024,
arXiv:2405.07813. Code: ``nik-dim/tall_masks`` (``src/utils/tallmask_utils.py``, ``src/eval/aggregation.py``),
as read in ``research/merge-methods.md`` section 2.4.

Update rule, per VLM target tensor (float32)::

    tau_MTL = sum_t tau_t                                  (merge = "ta")
            = TIES: global top-k trim, elect, disjoint sum  (merge = "ties")
    m_t     = 1[|tau_t| > mask_strength * |tau_MTL - tau_t|]      (TALL masks, on the untrimmed tau_t)
    c       = 1[sum_t m_t >= min_agreement]
    W       = W_0 + scale * c * tau_MTL

``min_agreement = 2`` drops both "catastrophic" weights (no task wants them) and "selfish" ones (one task
only); 1 drops only the catastrophic ones. The result is one model (no task identity); the masks exist only
while merging, one tensor at a time. The action expert is averaged, as in Task Arithmetic.

Defaults and sources: ``min_agreement = 2`` (``prun_thre_k``); ``mask_strength = 0.6`` (TALL masks choose it
per task on validation data from {0.2, ..., 0.6}; without validation data we take FusionBench's and
MergeVLA's fixed 0.6); ``scale = 1.0`` (the code sweeps it on validation data as for TA); for "ties":
``keep_fraction = 0.2`` with global top-k (TALL masks' TIES setting: top-20, disjoint sum).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

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
from vlamergebench.merge_methods.io import AtomicDirectory, open_views
from vlamergebench.merge_methods.ties import global_thresholds, ties_delta
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet


@dataclass(frozen=True)
class ConsensusConfig(MethodConfig):
    """Consensus merging parameters.

    Attributes:
        merge: tau_MTL rule: "ta" (sum) or "ties" (global top-k trim, elect, disjoint sum).
        min_agreement: Masks that must keep a weight (2: ``prun_thre_k``).
        mask_strength: lambda of the TALL masks (0.6: FusionBench / MergeVLA fixed value).
        keep_fraction: TIES trim for merge = "ties" (0.2, global).
        scale: lambda applied to the consensus vector (1.0).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    merge: str = "ta"
    min_agreement: int = 2
    mask_strength: float = 0.6
    keep_fraction: float = 0.2
    scale: float = 1.0
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "merge", self.merge, ("ta", "ties"))
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))
        check_fraction(owner, "keep_fraction", self.keep_fraction)


class Consensus(OneShotMethod):
    """One model: the multi-task vector restricted to weights at least ``min_agreement`` TALL masks keep."""

    config_class = ConsensusConfig

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Global-threshold passes (TIES only), then one pass: tau_MTL, masks, votes, merged tensor."""
        config: ConsensusConfig = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)
        targets = target_names(base, views)
        thresholds = None
        if config.merge == "ties" and config.keep_fraction < 1.0:
            thresholds = global_thresholds(base, views, targets, config.keep_fraction, progress)
        kept, total = 0, 0

        def merged_delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            nonlocal kept, total
            stacked = stacked_task_vectors(views, name, weight)
            if config.merge == "ta":
                multi_task = stacked.sum(dim=0)
            else:
                multi_task = ties_delta(stacked.clone(), thresholds, config.keep_fraction, "sum")
            votes = sum(
                ops.tall_mask(tau, multi_task, config.mask_strength).to(torch.int16) for tau in stacked
            )
            consensus = votes >= config.min_agreement
            kept, total = kept + int(consensus.sum()), total + consensus.numel()
            return (multi_task * consensus).mul_(config.scale)

        write_vlm(work.file(VLM_FILE), base, merged_delta, targets, progress)
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return {"kept_fraction": kept / max(total, 1)}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The one merged model."""
        return read_single_model(model)
