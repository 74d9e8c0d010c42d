"""Consensus merging (``consensus_ta``, ``consensus_ties``): keep only weights that several task masks want.

Paper: Wang et al., "Localizing Task Information for Improved Model Merging and Compression", ICML 2024,
arXiv:2405.07813. Code: ``nik-dim/tall_masks`` (``src/utils/tallmask_utils.py``, ``src/eval/aggregation.py``).

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
from vlamergebench.merge_methods.base import MergePass, TaskVectorMethod, TaskVectors
from vlamergebench.merge_methods.config import TaskVectorConfig, check_choice, check_fraction


@dataclass(frozen=True)
class ConsensusConfig(TaskVectorConfig):
    """Consensus parameters (and ``task_vectors``: "lora", the factors, or "dense").

    Attributes:
        merge: tau_MTL rule: "ta" (sum) or "ties" (global top-k trim, elect, disjoint sum).
        min_agreement: Masks that must keep a weight (2: ``prun_thre_k``).
        mask_strength: lambda of the TALL masks (0.6: FusionBench / MergeVLA fixed value).
        keep_fraction: TIES trim for merge = "ties" (0.2, global).
        scale: lambda applied to the consensus vector (1.0).
    """

    merge: str = "ta"
    min_agreement: int = 2
    mask_strength: float = 0.6
    keep_fraction: float = 0.2
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_choice(owner, "merge", self.merge, ("ta", "ties"))
        check_fraction(owner, "keep_fraction", self.keep_fraction)


class Consensus(TaskVectorMethod[ConsensusConfig]):
    """One model: the multi-task vector restricted to weights at least ``min_agreement`` TALL masks keep."""

    def global_keep_fraction(self) -> float | None:
        """``keep_fraction`` when tau_MTL is TIES (global top-k)."""
        return self.config.keep_fraction if self.config.merge == "ties" else None

    def merged_delta(self, tau: TaskVectors, run: MergePass) -> torch.Tensor:
        """tau_MTL, the TALL masks of the untrimmed tau_t, their votes, and the kept part of tau_MTL."""
        config = self.config
        stacked = tau.stacked()
        if config.merge == "ta":
            multi_task = stacked.sum(dim=0)
        else:
            multi_task = ops.ties_delta(stacked.clone(), run.thresholds, config.keep_fraction, "sum")
        votes = sum(ops.tall_mask(task, multi_task, config.mask_strength).to(torch.int16) for task in stacked)
        consensus = votes >= config.min_agreement
        run.tally.update(kept=int(consensus.sum()), total=consensus.numel())
        return (multi_task * consensus).mul_(config.scale)

    def state(self, run: MergePass) -> Mapping[str, Any]:
        """The fraction of target weights the consensus kept."""
        return {"kept_fraction": run.tally["kept"] / max(run.tally["total"], 1)}
