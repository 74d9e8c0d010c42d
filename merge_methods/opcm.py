"""OPCM (``opcm``): orthogonal projection-based continual merging, one expert at a time.

Paper: Tang et al., "Merging Models on the Fly Without Retraining: A Sequential Approach to Scalable Continual
Model Merging", arXiv:2501.09522. Code: FusionBench ``method/opcm/opcm.py`` (``OPCMForCLIP``) and
``config/method/opcm/opcm.yaml``.

Admission of expert t (t = 1, 2, ...), tau_t in float32 on the VLM targets, S_0 = 0::

    S_{t-1} = U diag(sigma) V^T                                   (per target matrix; thin SVD)
    r       = #{j : (sigma_1 + .. + sigma_j) / sum(sigma) <= alpha}    (leading directions: alpha of the mass)
    P       = U^T tau_t V,   P~ = P with P_ii = 0 for every i and P_ij = 0 for i, j <= r
    tau~_t  = tau_t - U (P - P~) V^T                              (tau_t without those components)
    S_t     = S_{t-1} + tau~_t
    lambda_t = ||S_t|| / mean_{i <= t} ||tau_i||                  (norms over all targets together)
    every skill seen so far: theta = theta_0 + S_t / lambda_t

S_t / lambda_t is the paper's (lambda_{t-1} Delta_{t-1} + tau~_t) / lambda_t with Delta_{t-1} = S_{t-1} /
lambda_{t-1}: storing S_t and lambda_t is the same model, written in one pass. At t = 1, S_1 = tau_1 and
lambda_1 = 1: the expert itself. r follows the code (the count of leading singular values whose cumulative
share is at most alpha); FusionBench's docs state it one larger. The action expert has no base: it is the
running mean of the experts' (``continual.py``), and ||tau|| is taken over the VLM targets (FusionBench: over
every parameter of the model).

Deviation: the SVD is truncated at S_{t-1}'s numerical rank (float32 cutoff), so P's diagonal is zeroed on
those directions only. FusionBench takes the full SVD of full-rank fine-tunes; LoRA experts make S_{t-1} low
rank, and beyond its rank the singular vectors are any orthonormal completion LAPACK returns, so zeroing P_ii
there would remove arbitrary parts of tau_t. Where S_{t-1} has full rank the two agree.

State between admissions (the merged directory, all of it counted in storage): S_t on the targets and the
averaged action expert in the base dtype; lambda_t and each admitted skill's ||tau|| (one float per task, in
admission order) in ``merged.json``. The base VLM is referenced; only the newest expert is read. Task
identity: not needed (one model for every skill). Default: ``alpha = 0.5`` (FusionBench ``opcm.yaml``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods.base import ContinualMethod
from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.continual import open_admission, write_averaged_head
from vlamergebench.merge_methods.io import AtomicDirectory, StreamingSafetensorsWriter
from vlamergebench.merge_methods.lowrank import numerical_tolerance
from vlamergebench.merge_methods.merged import MergedModel, read_all
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

SUM_FILE = "projected_sum.safetensors"


@dataclass(frozen=True)
class OpcmConfig(MethodConfig):
    """OPCM parameters.

    Attributes:
        alpha: Share of S_{t-1}'s singular-value mass whose leading block is protected (0.5: FusionBench).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    alpha: float = 0.5
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_fraction(owner, "alpha", self.alpha)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def split_rank(sigma: torch.Tensor, alpha: float) -> int:
    """r: how many leading singular values hold a cumulative share of ``sum(sigma)`` of at most alpha."""
    total = float(sigma.sum())
    return int((sigma.cumsum(0) / total <= alpha).sum()) if total > 0 else 0


def project(merged: torch.Tensor, tau: torch.Tensor, alpha: float) -> torch.Tensor:
    """tau~: ``tau`` without its (u_i, v_i) components and its (u_i, v_j), i, j <= r, ones (float32)."""
    if merged.dim() != 2:  # the paper's rule for other parameters: no projection
        return tau
    u, sigma, vh = torch.linalg.svd(merged.double(), full_matrices=False)
    keep = sigma > numerical_tolerance(sigma, merged.shape)
    u, sigma, v = u[:, keep], sigma[keep], vh[keep].T
    p = u.T @ tau.double() @ v
    removed = torch.diag(torch.diagonal(p))
    r = split_rank(sigma, alpha)
    removed[:r, :r] = p[:r, :r]
    return tau - (u @ removed @ v.T).float()


class Opcm(ContinualMethod[OpcmConfig]):
    """One model after each admission: base + projected running sum / lambda_t; averaged action expert."""

    base_files = (VLM_FILE,)

    def write_admission(
        self, seen: ExpertSet, previous: MergedModel | None, work: AtomicDirectory, progress: bool
    ) -> Mapping[str, Any]:
        """Project the newest task vector against S_{t-1}, one target at a time; then lambda_t."""
        config = self.config
        count = len(seen.experts)
        view, vlm, head, earlier, names = open_admission(seen, previous, SUM_FILE, config.task_vectors)
        tau_square, sum_square = 0.0, 0.0
        with StreamingSafetensorsWriter(
            work.file(SUM_FILE), [(n, vlm.dtype(n), vlm.shape(n)) for n in names]
        ) as out:
            for name in names:
                tau = view.task_vector(name, vlm.read(name) if config.task_vectors == "dense" else None)
                if earlier is not None and name in earlier:
                    before = earlier.read(name).float()
                    total = before + project(before, tau, config.alpha)
                else:
                    total = tau
                stored = total.to(vlm.dtype(name))
                out.write(name, stored)
                tau_square += float(tau.double().square().sum())
                sum_square += float(stored.double().square().sum())
        norms = [*(previous.state["task_norms"] if previous is not None else []), math.sqrt(tau_square)]
        mean_norm = sum(norms) / len(norms)
        scale = math.sqrt(sum_square) / mean_norm if sum_square > 0 and mean_norm > 0 else 1.0
        previous_head = previous.tensor_file(ACTION_EXPERT_FILE) if previous is not None else None
        write_averaged_head(work.file(ACTION_EXPERT_FILE), head, head.names, view, previous_head, count)
        return {"admitted": count, "lambda": scale, "task_norms": norms}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``theta_0 + S_t / lambda_t`` on the targets; the averaged action expert (every skill)."""
        tensors = read_all(model.base_file(VLM_FILE))
        sums, scale = model.tensor_file(SUM_FILE), float(model.state["lambda"])
        for name in sums.names:
            weight = tensors[name]
            tensors[name] = (weight.float() + sums.read(name).float() / scale).to(weight.dtype)
        tensors.update(read_all(model.tensor_file(ACTION_EXPERT_FILE)))
        return tensors
