"""WUDI-Merging (``wudi``): data-free interference minimisation, the task vectors standing in for the data.

Paper: Cheng et al., "Whoever Started the Interference Should End It: Guiding Data-Free Model Merging via Task
Vectors", ICML 2025, arXiv:2503.08099. Code: FusionBench ``fusion_bench/method/wudi/wudi.py`` (the authors'
implementation), run by MergeVLA for its WUDI row.

Per VLM target matrix, starting from tau_m = sum_t tau_t, ``iterations`` steps of Adam (lr ``step_size``,
betas (0.9, 0.999), eps 1e-8, no weight decay: ``torch.optim.Adam`` defaults) on::

    L(tau_m) = sum_t || (tau_m - tau_t) tau_t^T ||_F^2 / || tau_t ||_F^2
    W = W_0 + tau_m

Speed: the code forms the T products (tau_m - tau_t) tau_t^T of m x m each step and back-propagates. The
gradient is ``2 sum_t (tau_m - tau_t) tau_t^T tau_t / ||tau_t||^2``; with LoRA factors
``tau_t = L_t R_t`` (rank r), ``tau_t^T tau_t = R_t^T (L_t^T L_t) R_t``, so each step costs 2 T products of
size m x n x r instead of T of m x m x n, with the same Adam update (the tests check it against
autograd on the code's loss). A task whose tau is 0 on a tensor adds nothing there (the code divides by 0).

Defaults and sources: ``iterations = 300`` (MergeVLA's WUDI row and the code's function default; FusionBench's
yaml uses 400), ``step_size = 1e-5`` (the code's lr).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlamergebench.merge_methods.config import MethodConfig, check_choice
from vlamergebench.merge_methods.lowrank import LowRank, SingleModelFromFactors


@dataclass(frozen=True)
class WudiConfig(MethodConfig):
    """WUDI parameters.

    Attributes:
        iterations: Adam steps per matrix (300: MergeVLA, the code's default argument).
        step_size: Adam learning rate (1e-5: the code).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    iterations: int = 300
    step_size: float = 1e-5
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))
        if self.iterations < 0 or self.step_size < 0:
            raise ValueError(f"{owner}: iterations and step_size must be >= 0")


def wudi_loss(merged: torch.Tensor, task_vectors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The objective as the code writes it (dense; used by the tests as the reference)."""
    return sum(
        ((merged - tau) @ tau.T).square().sum() / tau.square().sum()
        for tau in task_vectors
        if bool(tau.any())
    )


def wudi_merge(factors: Sequence[LowRank], iterations: int, step_size: float) -> torch.Tensor:
    """tau_m after ``iterations`` Adam steps on the WUDI objective, from the tasks' factors."""
    taus = [task.dense() for task in factors]
    merged = torch.nn.Parameter(torch.stack(taus).sum(dim=0))
    # d/d tau_m = 2 sum_t ((tau_m - tau_t) R_t^T) (G_t R_t), G_t = L_t^T L_t / ||tau_t||^2 (r x r): no m x m
    # product. The difference is formed first, as the code's autograd does, so that where tau_m = tau_t it is
    # exactly 0 (Adam divides by the gradient's own scale, so round-off there would become a full step).
    terms = []
    for task, tau in zip(factors, taus, strict=True):
        gram = task.left.T @ task.left
        norm = float((gram * (task.right @ task.right.T)).sum())  # trace(L^T L R R^T) = ||L R||_F^2
        if norm > 0.0:
            terms.append((tau, task.right.T.contiguous(), (gram / norm) @ task.right))
    if not terms or iterations == 0:
        return merged.detach()
    optimizer = torch.optim.Adam([merged], lr=step_size, weight_decay=0.0)
    for _ in range(iterations):
        with torch.no_grad():
            gradient = torch.zeros_like(merged)
            for tau, right_t, weighted_right in terms:
                gradient.addmm_((merged - tau) @ right_t, weighted_right, alpha=2.0)
            merged.grad = gradient
        optimizer.step()
    return merged.detach()


class Wudi(SingleModelFromFactors[WudiConfig]):
    """One merged model: per target, the Adam-optimised tau_m."""

    def merged_delta(self, factors: Sequence[LowRank], name: str) -> torch.Tensor:
        """tau_m of the target."""
        config: WudiConfig = self.config
        return wudi_merge(factors, config.iterations, config.step_size)
