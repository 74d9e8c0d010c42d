"""RobustMerge (``robustmerge``, ``robustmerge_paper``): merge LoRA factors with complementary scaling.

Paper: Zeng et al., "RobustMerge: Parameter-Efficient Model Merging for MLLMs with Direction Robustness",
NeurIPS 2025, arXiv:2502.17159. Code: ``AuroraZengfh/RobustMerge``, ``llava/model/builder.py``
(``load_and_merge_pretrained_model``), read for this file.

``variant = "code"`` (``robustmerge``), per LoRA module, with A_t (rank, in) and B_t (out, rank) paired *by
module
name* (the code pairs them by dict iteration order)::

    prune:  A~_t = A_t * 1[|A_t| >= c], B~_t likewise; c keeps the top keep_fraction of the factor's entries
    ratio:  rho_tj = ||A_tj||_1 / ||A~_tj||_1               (row j of A = rank component j; >= 1)
    floor:  s_tj = max(rho_tj, sort(rho_t)[floor(floor_rank * rank)])   (order statistic: the code's clamp)
    A* = weight * sum_t A~_t
    B*[:, j] = weight * sum_t s_tj B~_t[:, j] / sum_t s_tj
    W = W_0 + (alpha / rank) * B* @ A*            (the merged LoRA is stored unfused)

``variant = "paper"`` (``robustmerge_paper``), the paper's merge (its section on cross-task normalisation):
the same pruning and ratios rho, *no* floor, coefficients normalised across tasks, and the product of the
summed factors::

    S~_t = diag(rho_t / sum_u rho_u)
    Delta W = lambda * (alpha / rank) * (sum_t B~_t S~_t) @ (sum_t A~_t)      (lambda = weight = 2)

stored as one dense model. The code variant is the same product with the floor on rho and ``weight`` applied
to *both* factors, so its weight change scales with ``weight ** 2`` (4x at the code's 2.0), where the paper's
lambda scales it once.

Defaults (code): ``keep_fraction = 0.2`` (``mask_ratio`` 0.2, used as the *kept* share), ``floor_rank = 0.8``
(``att_ratio`` 0.2), ``weight = 2.0`` (fuse weight; issue #8: "empirically set without specific search"); the
paper variant registers lambda = 2 as well. Non-LoRA trainables (our action expert) are averaged with 1/T, as
the code averages ``non_lora_trainables``. Deviations: the cutoff tie rule of ``ops.py`` (the code's
``kthvalue`` keeps one more entry); a rank row that pruning empties gets rho = 1 before the floor (the code
divides by 0). All experts must share one rank and one alpha (factors are merged entry by entry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import OneShotMethod
from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.io import (
    AtomicDirectory,
    MergeInputError,
    StreamingSafetensorsWriter,
    open_views,
)
from vlamergebench.merge_methods.merged import MergedModel, read_all, read_single_model
from vlamergebench.merge_methods.writers import target_names, write_action_expert, write_vlm
from vlamergebench.policies.checkpoint import (
    ACTION_EXPERT_FILE,
    LORA_A_SUFFIX,
    LORA_B_SUFFIX,
    LORA_FILE,
    VLM_FILE,
    ExpertSet,
)


@dataclass(frozen=True)
class RobustMergeConfig(MethodConfig):
    """RobustMerge parameters.

    Attributes:
        variant: "code" (authors' code: A and B merged separately) or "paper" (dense products).
        keep_fraction: Share of each factor's entries kept by magnitude (0.2: code ``mask_ratio``).
        floor_rank: Order-statistic position of the floor on rho, as a fraction of the rank (0.8: code
            ``att_ratio``).
        weight: Global merge coefficient (2.0: code; ``robustmerge_paper`` registers 1.0).
    """

    variant: str = "code"
    keep_fraction: float = 0.2
    floor_rank: float = 0.8
    weight: float = 2.0

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "variant", self.variant, ("code", "paper"))
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_fraction(owner, "floor_rank", self.floor_rank, open_top=True)


def rank_ratios(lora_a: torch.Tensor, pruned_a: torch.Tensor) -> torch.Tensor:
    """rho_j = ||A_j||_1 / ||A~_j||_1 per rank row (1 where pruning emptied the row)."""
    kept = pruned_a.abs().sum(dim=1)
    return torch.where(kept > 0, lora_a.abs().sum(dim=1) / kept.clamp(min=torch.finfo(kept.dtype).tiny), 1.0)


def merge_factors(
    factors: list[tuple[torch.Tensor, torch.Tensor]], config: RobustMergeConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The code variant on one module: [(A_t, B_t)] float32 -> (A*, B*)."""
    pruned = [
        (ops.trim_to_top_fraction(a, config.keep_fraction), ops.trim_to_top_fraction(b, config.keep_fraction))
        for a, b in factors
    ]
    scales = []
    for (a, _), (pruned_a, _) in zip(factors, pruned, strict=True):
        rho = rank_ratios(a, pruned_a)
        floor = torch.sort(rho).values[int(rho.numel() * config.floor_rank)]
        scales.append(torch.maximum(rho, floor))
    merged_a = config.weight * sum(pruned_a for pruned_a, _ in pruned)
    weighted_b = sum(pruned_b * scale for (_, pruned_b), scale in zip(pruned, scales, strict=True))
    merged_b = config.weight * weighted_b / sum(scales)
    return merged_a, merged_b


def paper_delta(
    factors: list[tuple[torch.Tensor, torch.Tensor]], scale: float, config: RobustMergeConfig
) -> torch.Tensor:
    """The paper variant on one module: dense ``lambda s (sum_t B~_t S~_t) (sum_t A~_t)``."""
    pruned = [
        (ops.trim_to_top_fraction(a, config.keep_fraction), ops.trim_to_top_fraction(b, config.keep_fraction))
        for a, b in factors
    ]
    ratios = [rank_ratios(a, pruned_a) for (a, _), (pruned_a, _) in zip(factors, pruned, strict=True)]
    total = sum(ratios)
    summed_b = sum(pruned_b * (rho / total) for (_, pruned_b), rho in zip(pruned, ratios, strict=True))
    summed_a = sum(pruned_a for pruned_a, _ in pruned)
    return (summed_b @ summed_a) * (config.weight * scale)


class RobustMerge(OneShotMethod[RobustMergeConfig]):
    """One merged LoRA (code variant, base referenced) or one dense model (paper variant)."""

    needs_lora_factors = True  # both variants prune and sum the A and B factors themselves

    @property
    def base_files(self) -> tuple[str, ...]:
        """The code variant stores the merged LoRA unfused, so it needs the base VLM at inference."""
        return (VLM_FILE,) if self.config.variant == "code" else ()

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Merge each target module's factors (one module in memory at a time)."""
        config = self.config
        base, views = open_views(experts.base, experts.experts, "lora")
        targets = target_names(base, views)
        for view in views:
            missing = [name for name in targets if not view.is_target(name)]
            if missing or (view.scale, view.checkpoint.config["lora"]["rank"]) != (
                views[0].scale,
                views[0].checkpoint.config["lora"]["rank"],
            ):
                raise MergeInputError(
                    f"expert {view.skill!r}: RobustMerge needs every expert to have the same LoRA "
                    f"targets, rank and alpha (missing {missing[:3]}, scale {view.scale})"
                )
        scale = views[0].scale
        if config.variant == "paper":
            write_vlm(
                work.file(VLM_FILE),
                base,
                lambda name, _: paper_delta([v.factors(name)[:2] for v in views], scale, config),
                targets,
                progress,
            )
        else:
            lora = views[0].index.file(LORA_FILE)
            specs = []
            for name in targets:
                module = name[: -len(".weight")]
                for suffix in (LORA_A_SUFFIX, LORA_B_SUFFIX):
                    specs.append(
                        (module + suffix, lora.dtype(module + LORA_A_SUFFIX), lora.shape(module + suffix))
                    )
            with StreamingSafetensorsWriter(work.file(LORA_FILE), specs) as writer:
                for name in targets:
                    factors = [tuple(t.float() for t in view.factors(name)[:2]) for view in views]
                    merged_a, merged_b = merge_factors(factors, config)
                    module, dtype = name[: -len(".weight")], specs[0][1]
                    writer.write(module + LORA_A_SUFFIX, merged_a.to(dtype))
                    writer.write(module + LORA_B_SUFFIX, merged_b.to(dtype))
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return {"lora_scale": scale}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """Base VLM + the merged LoRA folded (code) or the stored model (paper); averaged action expert."""
        if self.config.variant == "paper":
            return read_single_model(model)
        tensors = read_all(model.base_file(VLM_FILE))
        ops.fold_lora(tensors, read_all(model.tensor_file(LORA_FILE)), model.state["lora_scale"])
        tensors.update(read_all(model.tensor_file(ACTION_EXPERT_FILE)))
        return tensors
