"""Task Singular Vectors (``tsv``: TSV-Merge; ``tsv_c``: TSV-Compress).

Paper: Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025,
arXiv:2412.00081. Code: ``AntoAndGar/task_singular_vectors`` (``src/utils/TSVM_utils.py``,
``compute_and_sum_svd_mem_reduction``), the same function in FusionBench (``task_singular_vector``).

TSV-M, per VLM target matrix (float64 for the small factors, float32 result)::

    tau_t = U_t S_t V_t^T                                  (thin SVD; from the LoRA factors, exactly)
    k     = floor(min(m, n) / T)                           top k triplets of each task
    U^ = [U_1,k | .. | U_T,k],  S^ = diag(S_1,k, .., S_T,k),  V^ likewise
    U_perp = P_U Q_U^T  where U^ = P_U Sigma Q_U^T         (orthogonal polar factor; V_perp likewise)
    W = W_0 + alpha * U_perp S^ V_perp^T

so the merged delta's singular values are exactly the kept ones, on mutually orthogonal directions. Deviation:
a task keeps min(k, rank(tau_t)) triplets (numerical rank, float32 cutoff). The code keeps k even when tau_t's
rank is lower (r = 64 LoRA products of 896 x 4864 matrices at T = 4 keep 224); the extra vectors belong to
zero singular values, are any orthonormal completion LAPACK returns, and still enter the polar factor. Where
every task has rank >= k the two agree.

TSV-C (``tsv_c``) keeps each task's own top-k triplets and needs the task at inference:
``W_t = W_0 + alpha * U_t,k S_t,k V_t,k^T``. It stores, per skill and target, ``U S`` (m x k_t) and ``V``
(n x k_t) in the base dtype, plus the skill's own action expert (as ``lora_bank``: the action expert has no
base to compress against). For LoRA experts of rank r <= k this is lossless: TSV-C is then a re-factorised
LoRA bank. A target that is not a matrix (norms and biases, which only a full fine-tune changes) has no SVD:
TSV-M gives it the mean task vector (as the code does), TSV-C keeps each skill's own, whole.

Defaults and sources: ``alpha = 1.0`` (FusionBench ``TaskSingularVectorMerging.yaml``; MergeVLA's TSV row; the
code sweeps 0.1-3.0 on validation data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods.base import OneShotMethod
from vlamergebench.merge_methods.config import MethodConfig, check_choice
from vlamergebench.merge_methods.io import (
    AtomicDirectory,
    open_views,
    reads_base,
)
from vlamergebench.merge_methods.lowrank import (
    LowRank,
    SingleModelFromFactors,
    Spectrum,
    polar,
    task_factors,
    thin_svd,
)
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.merge_methods.writers import (
    copy_action_expert,
    factor_deltas,
    target_names,
    write_factor_parts,
)
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

FACTOR_FILE = "tsv_factors.safetensors"


@dataclass(frozen=True)
class TsvConfig(MethodConfig):
    """TSV parameters.

    Attributes:
        alpha: Scale of the merged (TSV-M) or per-task (TSV-C) delta (1.0: FusionBench, MergeVLA).
        task_vectors: Where tau comes from: "lora" (factors, exact) or "dense" (folded weights minus base).
    """

    alpha: float = 1.0
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "task_vectors", self.task_vectors, ("lora", "dense"))


def truncated_spectra(factors: Sequence[LowRank]) -> list[Spectrum]:
    """Each task's top ``floor(min(m, n) / T)`` singular triplets (fewer where its rank is lower)."""
    rows, cols = factors[0].left.shape[0], factors[0].right.shape[1]
    per_task = min(rows, cols) // len(factors)
    spectra = []
    for task in factors:
        u, s, v = thin_svd(task)
        spectra.append(Spectrum(u[:, :per_task], s[:per_task], v[:, :per_task]))
    return spectra


def tsv_merge(factors: Sequence[LowRank]) -> torch.Tensor:
    """TSV-M on one matrix: concatenate the truncated triplets, orthogonalise U^ and V^, keep S^."""
    spectra = truncated_spectra(factors)
    u_hat = torch.cat([spectrum.u for spectrum in spectra], dim=1)
    s_hat = torch.cat([spectrum.s for spectrum in spectra])
    v_hat = torch.cat([spectrum.v for spectrum in spectra], dim=1)
    return ((polar(u_hat) * s_hat) @ polar(v_hat).T).float()


class TsvMerge(SingleModelFromFactors[TsvConfig]):
    """TSV-M: one merged model."""

    def merged_delta(self, factors: Sequence[LowRank], name: str) -> torch.Tensor:
        """``alpha * U_perp S^ V_perp^T``."""
        return tsv_merge(factors).mul_(self.config.alpha)


class TsvCompress(OneShotMethod[TsvConfig]):
    """TSV-C: per skill, its truncated singular triplets of every target and its own action expert."""

    base_files = (VLM_FILE,)

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """One pass over the targets; each skill's factors streamed into its own file."""
        config: TsvConfig = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)
        vlm, targets = base.file(VLM_FILE), target_names(base, views)
        by_target: dict[str, list[dict[str, torch.Tensor]]] = {}  # per target, per skill: stored parts
        for name in targets:
            weight = vlm.read(name) if reads_base(views) else None
            if len(vlm.shape(name)) != 2:
                by_target[name] = [{".whole": view.task_vector(name, weight)} for view in views]
                continue
            spectra = truncated_spectra([task_factors(view, name, weight) for view in views])
            by_target[name] = [{".US": u * s, ".V": v} for u, s, v in spectra]  # U S (m, k_t), V (n, k_t)
        ranks: dict[str, int] = {}
        for index, view in enumerate(views):
            parts = {name + suffix: t for name in targets for suffix, t in by_target[name][index].items()}
            write_factor_parts(work.file(f"{skill_dir(index)}/{FACTOR_FILE}"), vlm, parts)
            head = base.file(ACTION_EXPERT_FILE).names
            copy_action_expert(work.file(f"{skill_dir(index)}/{ACTION_EXPERT_FILE}"), view, head)
            ranks[view.skill] = sum(t.shape[1] for part, t in parts.items() if part.endswith(".US"))
        return {"kept_triplets": ranks}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``W_0 + alpha U_t,k S_t,k V_t,k^T`` on the targets; the skill's own action expert."""
        folder = skill_dir(model.skill_index(skill))
        tensors = read_all(model.base_file(VLM_FILE))
        for name, delta in factor_deltas(model.tensor_file(f"{folder}/{FACTOR_FILE}")):
            weight = tensors[name]
            tensors[name] = (weight.float() + self.config.alpha * delta.float()).to(weight.dtype)
        tensors.update(read_all(model.tensor_file(f"{folder}/{ACTION_EXPERT_FILE}")))
        return tensors
