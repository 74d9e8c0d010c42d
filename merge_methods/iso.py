"""Isotropic merging (``iso_c``: common space; ``iso_cts``: common and task-specific subspaces).

Paper: Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
Subspaces", ICML 2025, arXiv:2502.04959. Code: ``danielm1405/iso-merging`` (``src/utils/iso.py``,
``config/method/*.yaml``);
the same functions in FusionBench (``isotropic_merging/iso_utils.py``).

Iso-C, per VLM target matrix::

    M = sum_t tau_t = U S V^T                  (thin SVD, min(m, n) singular values)
    W = W_0 + alpha * mean(S) * U V^T          (the spectrum made flat)

Iso-CTS, per matrix, with k = min(m, n)::

    k_c = k - T * round((k - floor(f k)) / T)               common directions (f = common_space_fraction)
    U_c = top k_c left singular vectors of M (with S_c, V_c)
    tau_t' = tau_t - U_c U_c^T tau_t = U_t' S_t' V_t'^T     each task outside the common space
    U^ = [U_1',(k-k_c)/T | .. | U_T',(k-k_c)/T | U_c]       likewise S^, V^
    W = W_0 + alpha * mean(S^) * polar(U^) polar(V^)^T

Spectrum (``spectrum``): the code flattens all min(m, n) singular values, zeros included, so the merged delta
has full rank. For LoRA experts M has rank <= T r, and the directions of its zero singular values are any
orthonormal completion the SVD returns: ``"full"`` (the default, as the code) adds ``mean(S)`` along them.
Here it is computed from the factors (:func:`iso_c_from_factors`): M's thin SVD from its factors, and the
completion from Householder reflections of U and V (as arbitrary as LAPACK's, and deterministic), 2.6-7
times less CPU than a dense float64 SVD per matrix at Qwen2.5-0.5B's shapes; the dense SVD runs only where
T r >= min(m, n).
``iso_c`` also offers ``"support"``: flatten only over M's numerical rank (mean of the non-zero singular
values), computed from the factors without a dense SVD. Iso-CTS runs as the code does (dense SVDs); with
low-rank experts its task-specific parts are the projections' round-off, so its extra directions are equally
arbitrary (stated, not changed).

Defaults and sources: ``alpha = 1.0`` (FusionBench ``scaling_factor``; the code sweeps it on validation data,
and its issue #6 reports 3.5-4.5 for LoRA experts), ``common_space_fraction = 0.8`` (``iso_cts.yaml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.lowrank import LowRank, SingleModelFromFactors, concatenated, polar, thin_svd


@dataclass(frozen=True)
class IsoConfig(MethodConfig):
    """Iso-C / Iso-CTS parameters.

    Attributes:
        variant: "c" (common space only) or "cts" (common and task-specific subspaces).
        alpha: Scale of the merged delta (1.0: FusionBench).
        spectrum: Iso-C: "full" (all min(m, n) singular values, as the code) or "support" (M's rank only).
        common_space_fraction: Iso-CTS share of the common subspace (0.8: ``iso_cts.yaml``).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    variant: str = "c"
    alpha: float = 1.0
    spectrum: str = "full"
    common_space_fraction: float = 0.8
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "variant", self.variant, ("c", "cts"))
        check_choice(owner, "spectrum", self.spectrum, ("full", "support"))
        check_fraction(owner, "common_space_fraction", self.common_space_fraction)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))
        if self.variant == "cts" and self.spectrum != "full":
            raise ValueError(f"{owner}: spectrum 'support' is defined for Iso-C only")


def iso_c(summed: torch.Tensor) -> torch.Tensor:
    """``mean(S) U V^T`` of a dense matrix (every singular value, zeros included)."""
    u, s, vh = torch.linalg.svd(summed.double(), full_matrices=False)
    return (s.mean() * (u @ vh)).float()


def orthonormal_complement(basis: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` orthonormal columns orthogonal to the orthonormal columns of ``basis`` (d, r).

    The next columns of the Householder QR's full Q: H_1 .. H_r applied to e_{r+1} .. e_{r+count}, without
    forming the d x d matrix.
    """
    rows, rank = basis.shape
    reflectors, scales = torch.geqrf(basis)
    padded = torch.cat([reflectors, basis.new_zeros(rows, count)], dim=1)
    return torch.linalg.householder_product(padded, scales)[:, rank:]


def iso_c_from_factors(factors: Sequence[LowRank]) -> torch.Tensor:
    """``mean(S) U V^T`` of ``sum_t tau_t`` over all min(m, n) singular values, from the factors.

    U V^T is ``U_r V_r^T`` on M's support plus a completion ``U_c V_c^T`` by orthonormal complements of
    U_r and V_r (min(m, n) - r columns each), which is what a full SVD returns up to its arbitrary choice.
    """
    total = concatenated(factors)
    rows, cols = total.left.shape[0], total.right.shape[1]
    full = min(rows, cols)
    if total.left.shape[1] >= full:  # no rank to save: the dense SVD is the cheaper one
        return iso_c(total.dense())
    u, s, v = thin_svd(total)
    if s.numel() == 0:
        return torch.zeros(rows, cols)
    missing = full - s.numel()
    delta = u.float() @ v.float().T
    if missing:
        delta.addmm_(orthonormal_complement(u, missing).float(), orthonormal_complement(v, missing).float().T)
    return delta.mul_(float(s.sum()) / full)


def iso_c_support(factors: Sequence[LowRank]) -> torch.Tensor:
    """Iso-C over the numerical rank of ``sum_t tau_t`` only, from the factors."""
    u, s, v = thin_svd(concatenated(factors))
    if s.numel() == 0:
        return torch.zeros(factors[0].left.shape[0], factors[0].right.shape[1])
    return (s.mean() * (u @ v.T)).float()


def common_space_size(rows: int, cols: int, tasks: int, fraction: float) -> int:
    """k_c: ``floor(f k)`` moved so that the task-specific remainder divides by T (the code's rule)."""
    full = min(rows, cols)
    common = int(full * fraction)
    return full - round((full - common) / tasks) * tasks


def iso_cts(task_vectors: Sequence[torch.Tensor], fraction: float) -> torch.Tensor:
    """Iso-CTS on one matrix from the dense task vectors (float64 SVDs)."""
    taus = [tau.double() for tau in task_vectors]
    rows, cols = taus[0].shape
    common = common_space_size(rows, cols, len(taus), fraction)
    per_task = (min(rows, cols) - common) // len(taus)
    u, s, vh = torch.linalg.svd(sum(taus), full_matrices=False)
    u_common = u[:, :common]
    us, ss, vhs = [], [], []
    for tau in taus:
        u_t, s_t, vh_t = torch.linalg.svd(tau - u_common @ (u_common.T @ tau), full_matrices=False)
        us.append(u_t[:, :per_task])
        ss.append(s_t[:per_task])
        vhs.append(vh_t[:per_task])
    u_hat = torch.cat([*us, u_common], dim=1)
    s_hat = torch.cat([*ss, s[:common]])
    v_hat = torch.cat([*vhs, vh[:common]], dim=0).T
    return (s_hat.mean() * (polar(u_hat) @ polar(v_hat).T)).float()


class Iso(SingleModelFromFactors[IsoConfig]):
    """One merged model with a flat spectrum per target matrix."""

    def merged_delta(self, factors: Sequence[LowRank], name: str) -> torch.Tensor:
        """Iso-C or Iso-CTS of the target, times alpha."""
        config: IsoConfig = self.config
        if config.variant == "cts":
            delta = iso_cts([task.dense() for task in factors], config.common_space_fraction)
        elif config.spectrum == "support":
            delta = iso_c_support(factors)
        else:
            delta = iso_c_from_factors(factors)
        return delta.mul_(config.alpha)
