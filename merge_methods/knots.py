"""KnOTS (``knots``): align LoRA updates by a joint SVD, then merge them with TIES in the shared basis.

Paper: Stoica et al., "Model merging with SVD to tie the KnOTS", ICLR 2025, arXiv:2410.19735. Code:
``gstoica27/KnOTS`` (``task_merger.py``: ``apply_svd``, ``merge``; ``configs/*.py``).

Per VLM target matrix, with tau_t = (alpha / r) B_t A_t (O x I)::

    [tau_1 | .. | tau_T] = U S [V_1 | .. | V_T]^T        (joint SVD; directions with S <= 1e-5 dropped)
    rep_t = S V_t^T = U^T tau_t                            (k x I: task t in the shared basis)
    rep   = TIES(rep_1..T): trim to the top keep_fraction of |rep_t|, elect sign(sum), disjoint mean
    W     = W_0 + scale * U rep

The joint SVD comes from the factors ([L_1..L_T] blockdiag(R_1..R_T) has rank <= T r), never from the
O x T I matrix. With ``keep_fraction = 1`` and one expert, ``U U^T tau = tau``: the expert is returned.

Deviation: the trim is per matrix. KnOTS flattens every layer's representations into one vector before
TIES (a global top-k); with the default keep_fraction = 1.0 (no trim) the two agree.

Defaults and sources: ``keep_fraction = 1.0`` and ``scale = 0.5`` (``configs/llama8B_r16_knots_ties.py``:
topK 100, the language-model setting; the ViT-B configs use topK 20 with scale 0.6), disjoint mean
(``merging_type`` mean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.lowrank import LowRank, SingleModelFromFactors

SUPPORT_CUTOFF = 1e-5  # KnOTS keeps basis directions with singular value > 1e-5


@dataclass(frozen=True)
class KnotsConfig(MethodConfig):
    """KnOTS parameters.

    Attributes:
        keep_fraction: TIES trim of each task's representation, per matrix (1.0: Llama config topK 100).
        scale: Scale of the merged delta (0.5: Llama config).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    keep_fraction: float = 1.0
    scale: float = 0.5
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def joint_basis(factors: Sequence[LowRank]) -> torch.Tensor:
    """U (O x k, float64) of the SVD of ``[tau_1 | .. | tau_T]``, singular values > 1e-5 only."""
    lefts = torch.cat([task.left.double() for task in factors], dim=1)
    if lefts.shape[1] == 0:
        return lefts
    q_left, r_left = torch.linalg.qr(lefts)
    # blockdiag(R_t)^T = blockdiag(R_t^T) has QR blockdiag(Q_t) blockdiag(Rr_t): only the R parts matter for U
    r_blocks = [torch.linalg.qr(task.right.double().T).R for task in factors]
    core = r_left @ torch.block_diag(*r_blocks).T
    u, s, _ = torch.linalg.svd(core, full_matrices=False)
    return q_left @ u[:, s > SUPPORT_CUTOFF]


def knots_merge(factors: Sequence[LowRank], keep_fraction: float) -> torch.Tensor:
    """``U TIES(U^T tau_1, .., U^T tau_T)`` of one matrix (float32)."""
    basis = joint_basis(factors)
    reps = torch.stack([(basis.T @ task.left.double()) @ task.right.double() for task in factors])
    for index in range(reps.shape[0]):
        reps[index] = ops.trim_to_top_fraction(reps[index], keep_fraction)
    merged = ops.disjoint_merge(reps, ops.elect_sign(reps), "mean")
    return (basis @ merged).float()


class Knots(SingleModelFromFactors[KnotsConfig]):
    """One merged model, merged in each matrix's joint SVD basis."""

    def merged_delta(self, factors: Sequence[LowRank], name: str) -> torch.Tensor:
        """``scale * U TIES(reps)``."""
        config: KnotsConfig = self.config
        return knots_merge(factors, config.keep_fraction).mul_(config.scale)
