"""DARE (``dare``, ``dare_ties``): random drop and rescale of each task vector, then TA or TIES.

Paper: Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
Lunch", ICML 2024, arXiv:2311.03099. Code: ``yule-BUAA/MergeLM``
(``model_merging_methods/mask_weights_utils.py``).

Update rule, per VLM target tensor (float32)::

    m_t ~ Bernoulli(drop_fraction) per entry, drawn from a generator seeded by (seed, skill, tensor name)
    tau_t <- (1 - m_t) * tau_t / (1 - drop_fraction)
    then  combine = "ta":   W = W_0 + scale * sum_t tau_t
          combine = "ties": W = W_0 + scale * TIES(tau_1..T)   (trim by keep_fraction per tensor, elect,
                            then the disjoint mean, or with reduce = "sum" the disjoint sum)

Seeding per (seed, skill, tensor) makes the drops independent of the order tensors are visited in, so a
streamed and an in-memory merge draw the same masks. The action expert is averaged, as in Task Arithmetic.

Defaults and sources: ``drop_fraction = 0.2`` (MergeLM's ``weight_mask_rate`` in its LLM examples; the paper
sweeps 0.1-0.9, FusionBench ships 0.5, MergeKit asks for ``density = 1 - p``); rescaling always on (MergeLM
``use_weight_rescale`` True); ``scale = 1.0`` (MergeKit lambda); ``dare_ties``: ``keep_fraction = 1.0``, i.e.
no magnitude trim after the drop, as MergeKit's ``dare_ties`` (MergeLM can also trim); ``seed = 0``;
``reduce = "mean"`` (the TIES paper's disjoint mean). MergeKit's ``dare_ties`` and FusionBench's default to
the disjoint *sum*: pass ``reduce=sum`` to reproduce them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import MergePass, TaskVectorMethod, TaskVectors
from vlamergebench.merge_methods.config import TaskVectorConfig, check_choice, check_fraction


@dataclass(frozen=True)
class DareConfig(TaskVectorConfig):
    """DARE parameters (and ``task_vectors``: "lora", the factors, or "dense").

    Attributes:
        drop_fraction: Probability p of dropping each task-vector entry (0.2: MergeLM LLM examples).
        combine: "ta" (sum) or "ties" (trim / elect / disjoint mean) after the drop.
        keep_fraction: TIES magnitude trim after the drop, per tensor (1.0 = none, MergeKit dare_ties).
        reduce: combine = "ties": disjoint "mean" (TIES paper) or "sum" (MergeKit, FusionBench).
        scale: lambda applied to the merged task vector (1.0: MergeKit).
        seed: Seed of the drop masks (with skill and tensor name).
    """

    drop_fraction: float = 0.2
    combine: str = "ta"
    keep_fraction: float = 1.0
    reduce: str = "mean"
    scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        owner = type(self).__name__
        check_fraction(owner, "drop_fraction", self.drop_fraction, open_top=True)
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_choice(owner, "combine", self.combine, ("ta", "ties"))
        check_choice(owner, "reduce", self.reduce, ("mean", "sum"))


class Dare(TaskVectorMethod[DareConfig]):
    """One merged model from dropped-and-rescaled task vectors; averaged action expert."""

    def merged_delta(self, tau: TaskVectors, run: MergePass) -> torch.Tensor:
        """Drop and rescale each tau_t (mask drawn per expert and tensor), then sum or TIES."""
        config = self.config
        dropped = torch.stack(
            [
                ops.drop_and_rescale(
                    task_vector, config.drop_fraction, ops.generator_for(config.seed, skill, tau.name)
                )
                for skill, task_vector in tau.each()
            ]
        )
        if config.combine == "ta":
            return dropped.sum(dim=0).mul_(config.scale)
        return ops.ties_delta(dropped, None, config.keep_fraction, config.reduce).mul_(config.scale)
