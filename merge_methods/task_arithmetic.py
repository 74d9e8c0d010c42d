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

from dataclasses import dataclass

import torch

from vlamergebench.merge_methods.base import MergePass, TaskVectorMethod, TaskVectors
from vlamergebench.merge_methods.config import TaskVectorConfig


@dataclass(frozen=True)
class TaskArithmeticConfig(TaskVectorConfig):
    """Task Arithmetic parameters (and ``task_vectors``: "lora", the factors, exact, or "dense").

    Attributes:
        scale: lambda multiplying the sum of task vectors (1.0: MergeVLA mergy.py "TA"; MergeKit lambda
            default).
    """

    scale: float = 1.0


class TaskArithmetic(TaskVectorMethod[TaskArithmeticConfig]):
    """One merged model: ``W_0 + scale * sum_t tau_t``; averaged action expert."""

    def merged_delta(self, tau: TaskVectors, run: MergePass) -> torch.Tensor:
        """``scale * sum_t tau_t``, summed as it streams (T task vectors never in memory at once)."""
        total = tau.sum()
        return total.mul_(self.config.scale) if self.config.scale != 1.0 else total
