"""Task Arithmetic (``ta``): add the scaled sum of task vectors to the base.

Paper: Ilharco et al., "Editing Models with Task Arithmetic", ICLR 2023, arXiv:2212.04089.

Update rule, per VLM tensor W (LoRA targets; every other VLM tensor equals the base in every expert)::

    tau_t = W_t - W_0 = (alpha_t / rank_t) * B_t @ A_t          (float32)
    W     = W_0 + scale * sum_t tau_t                           (cast to the base dtype)

The action expert (head, action queries, proprio projector) has no pretrained base to take task vectors
against, so it is the uniform average of the experts' (MergeVLA's ``weighted_average``; CARVE's averaging
baseline).

Defaults and sources:
- ``scale = 1.0``: MergeVLA's "TA" (``model_merging/mergy.py``, a plain sum) and MergeKit's ``lambda``. The
  paper picks it on validation data from {0.05, ..., 1.0}; FusionBench ships 0.3; CARVE's continual TA uses
  1/T. Pass ``--set scale=0.3`` to reproduce FusionBench.
- ``task_vectors = "lora"``: tau from the factors (exact). ``"dense"`` reads ``dense.safetensors`` instead.

Summing dense products is TA; summing the A's and B's separately is not (that would add cross terms B_i A_j).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods.base import (
    MergedModel,
    MethodConfig,
    OneShotMethod,
    check_choice,
    read_single_model,
    target_names,
    write_action_expert,
    write_vlm,
)
from vlamergebench.merge_methods.io import AtomicDirectory, MergeInputError, count_non_finite, open_views
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet


@dataclass(frozen=True)
class TaskArithmeticConfig(MethodConfig):
    """Task Arithmetic parameters.

    Attributes:
        scale: lambda multiplying the sum of task vectors (1.0: MergeVLA mergy.py "TA"; MergeKit lambda
            default).
        task_vectors: Where tau comes from: "lora" (factors, exact) or "dense" (folded weights minus the
            base).
    """

    scale: float = 1.0
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "task_vectors", self.task_vectors, ("lora", "dense"))


class TaskArithmetic(OneShotMethod):
    """One merged model: ``W_0 + scale * sum_t tau_t``; averaged action expert."""

    config_class = TaskArithmeticConfig

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """Stream every target tensor once: T task vectors in, one merged tensor out."""
        config: TaskArithmeticConfig = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)

        def merged_delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            if (
                config.task_vectors == "dense"
            ):  # sum_t W_t - T W_0: one widening per expert, no subtraction each
                terms = (view.weight(name, weight) for view in views)
            else:
                terms = (view.task_vector(name, weight, check=False) for view in views)
            first = next(terms)
            total = first.clone() if first is weight else first
            for term in terms:  # accumulate: one running sum, not T task vectors, in memory
                total += term
            if config.task_vectors == "dense":
                total.sub_(weight, alpha=len(views))
            if count_non_finite(total):  # every NaN/Inf of every tau reaches the sum: one check, not T
                for view in views:  # find the expert at fault (its check raises), else the sum overflowed
                    view.task_vector(name, weight)
                raise MergeInputError(f"the Task Arithmetic sum of {name!r} overflows")
            return total.mul_(config.scale) if config.scale != 1.0 else total

        write_vlm(work.file(VLM_FILE), base, merged_delta, target_names(base, views), progress)
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return {}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The one merged model (the same tensors for every skill)."""
        return read_single_model(model)
