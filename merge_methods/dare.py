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
    target_names,
    write_action_expert,
    write_vlm,
)
from vlamergebench.merge_methods.io import AtomicDirectory, open_views
from vlamergebench.merge_methods.ties import ties_delta
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet


@dataclass(frozen=True)
class DareConfig(MethodConfig):
    """DARE parameters.

    Attributes:
        drop_fraction: Probability p of dropping each task-vector entry (0.2: MergeLM LLM examples).
        combine: "ta" (sum) or "ties" (trim / elect / disjoint mean) after the drop.
        keep_fraction: TIES magnitude trim after the drop, per tensor (1.0 = none, MergeKit dare_ties).
        reduce: combine = "ties": disjoint "mean" (TIES paper) or "sum" (MergeKit, FusionBench).
        scale: lambda applied to the merged task vector (1.0: MergeKit).
        seed: Seed of the drop masks (with skill and tensor name).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    drop_fraction: float = 0.2
    combine: str = "ta"
    keep_fraction: float = 1.0
    reduce: str = "mean"
    scale: float = 1.0
    seed: int = 0
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_fraction(owner, "drop_fraction", self.drop_fraction, open_top=True)
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_choice(owner, "combine", self.combine, ("ta", "ties"))
        check_choice(owner, "reduce", self.reduce, ("mean", "sum"))
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


class Dare(OneShotMethod):
    """One merged model from dropped-and-rescaled task vectors; averaged action expert."""

    config_class = DareConfig

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """One pass over the target tensors; each expert's drop mask is drawn per tensor."""
        config: DareConfig = self.config  # type: ignore[assignment]
        base, views = open_views(experts.base, experts.experts, config.task_vectors)

        def merged_delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            dropped = torch.stack(
                [
                    ops.drop_and_rescale(
                        view.task_vector(name, weight),
                        config.drop_fraction,
                        ops.generator_for(config.seed, view.skill, name),
                    )
                    for view in views
                ]
            )
            if config.combine == "ta":
                return dropped.sum(dim=0).mul_(config.scale)
            return ties_delta(dropped, None, config.keep_fraction, config.reduce).mul_(config.scale)

        write_vlm(work.file(VLM_FILE), base, merged_delta, target_names(base, views), progress)
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return {}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The one merged model."""
        return read_single_model(model)
