"""Task vectors as exact low-rank factors, for the SVD-based methods (TSV, Iso, WUDI, KnOTS, Core Space).

A LoRA expert's task vector of one target is ``tau = (alpha / r) B A``: rank at most r. Methods whose papers
take an SVD of tau (or of a stack of them) get it here from the factors, exactly, without ever decomposing the
dense m x n matrix: QR of the two factors and an SVD of the r x r core. With ``task_vectors = "dense"`` tau is
read from the folded weights and factorised by a dense SVD truncated at its numerical rank, so the same
formulas run on either source. A dense expert (a full fine-tune) also changes tensors that are not matrices
(norms, biases, convolution kernels); they have no SVD, and :class:`SingleModelFromFactors` gives them the
mean task vector, as TSV's and Iso's code do for every non-matrix parameter.

Every function is pure (tensors in, tensors out). Factor products are formed in float64 where they are small
(cores, polar factors), the dense result in float32.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import torch

from vlamergebench.merge_methods.base import OneShotMethod, TaskVectors
from vlamergebench.merge_methods.config import MethodConfig
from vlamergebench.merge_methods.io import AtomicDirectory, ExpertView, MergeInputError, open_views
from vlamergebench.merge_methods.merged import MergedModel, read_single_model
from vlamergebench.merge_methods.writers import target_names, write_action_expert, write_vlm
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

C = TypeVar("C", bound=MethodConfig)


class LowRank(NamedTuple):
    """``tau = left @ right``: left (m, k), right (k, n), float32; k may be 0 (tau = 0)."""

    left: torch.Tensor
    right: torch.Tensor

    def dense(self) -> torch.Tensor:
        """The m x n matrix, float32."""
        return self.left @ self.right


class Spectrum(NamedTuple):
    """``tau = U diag(S) V^T`` with orthonormal columns in U (m, k) and V (n, k), S descending, float64."""

    u: torch.Tensor
    s: torch.Tensor
    v: torch.Tensor


def numerical_tolerance(singular_values: torch.Tensor, shape: Sequence[int]) -> float:
    """NumPy's ``matrix_rank`` cutoff for float32 data: ``sigma_max * max(m, n) * eps``."""
    if singular_values.numel() == 0:
        return 0.0
    return float(singular_values.max()) * max(shape) * float(torch.finfo(torch.float32).eps)


def thin_svd(factors: LowRank) -> Spectrum:
    """Exact SVD of ``left @ right`` from its factors, truncated at the numerical rank.

    ``left = Q_l R_l`` and ``right^T = Q_r R_r`` give ``tau = Q_l (R_l R_r^T) Q_r^T``; the SVD of the small
    core gives the rest. Directions whose singular value is below the float32 rank cutoff are dropped: their
    vectors are arbitrary (any orthonormal completion), so keeping them would make a merge depend on LAPACK.
    """
    left, right = factors.left.double(), factors.right.double()
    rows, cols = left.shape[0], right.shape[1]
    if left.shape[1] == 0:
        return Spectrum(left.new_zeros(rows, 0), left.new_zeros(0), left.new_zeros(cols, 0))
    q_left, r_left = torch.linalg.qr(left)
    q_right, r_right = torch.linalg.qr(right.T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T, full_matrices=False)
    keep = s > numerical_tolerance(s, (rows, cols))
    return Spectrum(q_left @ u[:, keep], s[keep], q_right @ vh[keep].T)


def polar(matrix: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor ``P Q^T`` of ``matrix = P S Q^T``.

    It is the matrix with orthonormal columns nearest to ``matrix`` in Frobenius norm.
    """
    if matrix.shape[1] == 0:
        return matrix
    p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
    return p @ qh


def concatenated(factors: Sequence[LowRank]) -> LowRank:
    """``sum_t left_t right_t`` as one factorisation ``[left_1 .. left_T] [right_1; ..; right_T]``."""
    return LowRank(torch.cat([f.left for f in factors], dim=1), torch.cat([f.right for f in factors], dim=0))


def dense_factors(tau: torch.Tensor) -> LowRank:
    """A dense task vector as ``(U S) V^T``, truncated at its numerical rank (float32 factors)."""
    u, s, vh = torch.linalg.svd(tau.double(), full_matrices=False)
    keep = s > numerical_tolerance(s, tau.shape)
    return LowRank((u[:, keep] * s[keep]).float(), vh[keep].float())


def task_factors(view: ExpertView, name: str, weight: torch.Tensor | None) -> LowRank:
    """One expert's task vector of one VLM target as factors.

    ``(scale B, A)`` from its LoRA, the truncated SVD of the folded delta with a dense view, or rank 0 where
    the expert does not target the tensor.
    """
    shape = view.base.file(VLM_FILE).shape(name)
    if len(shape) != 2:
        raise MergeInputError(f"expert {view.skill!r}: tensor {name!r} has shape {list(shape)}, not a matrix")
    if not view.is_target(name):
        return LowRank(torch.zeros(shape[0], 0), torch.zeros(0, shape[1]))
    if view.source == "dense":
        return dense_factors(view.task_vector(name, weight))
    lora_a, lora_b, scale = view.factors(name)  # reads check every entry is finite, naming file and tensor
    return LowRank(lora_b.float() * scale, lora_a.float())


class SingleModelFromFactors(OneShotMethod[C]):
    """Glue for a method whose rule maps the experts' factors of one target to one merged delta.

    Subclasses implement :meth:`merged_delta`; the VLM is written with the base elsewhere, a target that is
    not a matrix gets the mean task vector, the action expert is the uniform average (it has no pretrained
    base), and every skill instantiates the one model.
    """

    @abstractmethod
    def merged_delta(self, factors: Sequence[LowRank], name: str) -> torch.Tensor:
        """The float32 merged task vector of target ``name`` from every expert's factors."""

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """One streaming pass over the targets."""
        source = getattr(self.config, "task_vectors", "lora")
        base, views = open_views(experts.base, experts.experts, source)

        def delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            if weight.ndim != 2:
                return TaskVectors(name, weight, views).sum().div_(len(views))
            return self.merged_delta([task_factors(view, name, weight) for view in views], name)

        write_vlm(work.file(VLM_FILE), base, delta, target_names(base, views), progress)
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views)
        return {}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The one merged model."""
        return read_single_model(model)
