"""Core Space merging (``core_space``): merge LoRA updates in the core of shared reference bases.

Paper: Panariello et al., "Accurate and Efficient Low-Rank Model Merging in Core Space", NeurIPS 2025,
arXiv:2509.17786. Code: ``apanariello4/core-space-merging`` (``task_merger.py``, ``MatrixPerLayerMerger``:
``get_core_matrices``, ``merge_space = "core"``; ``configs/vitB_r16_core_tsv.py``).

Per VLM target with factors B_t (m x r, the LoRA scale folded in) and A_t (r x n)::

    U_B = left singular vectors of [B_1 .. B_T]        (m x T r)
    V_A = right singular vectors of [A_1; ..; A_T]     (n x T r)
    M_t = U_B^T B_t A_t V_A                             (T r x T r: task t in the core space)
    M   = merge(M_1..M_T)                               ("ta": sum; "ties": per-matrix TIES; "tsv": TSV-M)
    W   = W_0 + scale * U_B M V_A^T

Every B_t A_t lies in span(U_B) x span(V_A), so the projection is lossless: with ``merge = "ta"`` the result
is plain LoRA addition (``ta``) exactly, up to float rounding, at a cost in (T r)^2 instead of m n for the
merge itself. A zero-rank task (an expert that does not target the tensor) contributes M_t = 0.

Defaults and sources: ``merge = "tsv"`` (the repository's shipped core-space config), ``scale = 1.0`` (TSV-M's
alpha; that config uses 0.2 for eight ViT tasks, chosen on validation data), ``keep_fraction = 0.1`` for
``"ties"`` (``_process_ties`` default topK 10). With ``task_vectors = "dense"`` the factors are the truncated
SVD factors of each folded delta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.lowrank import LowRank, SingleModelFromFactors, dense_factors
from vlamergebench.merge_methods.tsv import tsv_merge


@dataclass(frozen=True)
class CoreSpaceConfig(MethodConfig):
    """Core Space parameters.

    Attributes:
        merge: Rule inside the core: "ta" (sum), "ties" (trim, elect, disjoint mean) or "tsv" (TSV-M).
        scale: Scale of the merged delta (1.0).
        keep_fraction: TIES trim per core matrix (0.1: the code's topK default).
        task_vectors: Where the factors come from: "lora" or "dense" (SVD of the folded delta).
    """

    merge: str = "tsv"
    scale: float = 1.0
    keep_fraction: float = 0.1
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "merge", self.merge, ("ta", "ties", "tsv"))
        check_fraction(owner, "keep_fraction", self.keep_fraction)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def reference_bases(factors: Sequence[LowRank]) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_B (m x k_B), V_A (n x k_A)), float64, from the stacked B's and A's."""
    u_b = torch.linalg.svd(torch.cat([t.left.double() for t in factors], dim=1), full_matrices=False).U
    vh_a = torch.linalg.svd(torch.cat([t.right.double() for t in factors], dim=0), full_matrices=False).Vh
    return u_b, vh_a.T


def core_matrices(factors: Sequence[LowRank], u_b: torch.Tensor, v_a: torch.Tensor) -> torch.Tensor:
    """``(T, k_B, k_A)``: each task projected into the core, ``(U_B^T B_t)(A_t V_A)``."""
    return torch.stack([(u_b.T @ t.left.double()) @ (t.right.double() @ v_a) for t in factors])


def core_space_merge(factors: Sequence[LowRank], merge: str, keep_fraction: float) -> torch.Tensor:
    """``U_B merge(M_1..M_T) V_A^T`` of one matrix (float32)."""
    if sum(task.left.shape[1] for task in factors) == 0:
        return torch.zeros(factors[0].left.shape[0], factors[0].right.shape[1])
    u_b, v_a = reference_bases(factors)
    cores = core_matrices(factors, u_b, v_a)
    if merge == "ta":
        merged = cores.sum(dim=0)
    elif merge == "ties":
        for index in range(cores.shape[0]):
            cores[index] = ops.trim_to_top_fraction(cores[index], keep_fraction)
        merged = ops.disjoint_merge(cores, ops.elect_sign(cores), "mean")
    else:
        merged = tsv_merge([dense_factors(core.float()) for core in cores]).double()
    return (u_b @ merged @ v_a.T).float()


class CoreSpace(SingleModelFromFactors[CoreSpaceConfig]):
    """One merged model, each target merged in its core space."""

    # The core is spanned by the stacked B's and A's; a full fine-tune's delta has full rank, so its "core"
    # would be the whole space and nothing of the method would remain.
    needs_lora_factors = True

    def merged_delta(self, factors: Sequence[LowRank], name: str) -> torch.Tensor:
        """``scale * U_B M V_A^T``."""
        config: CoreSpaceConfig = self.config
        return core_space_merge(factors, config.merge, config.keep_fraction).mul_(config.scale)
