"""Twin-Merging (``twin_merging``): a shared expert plus a compressed exclusive ("twin") vector per skill.

Paper: Lu et al., "Twin-Merging: Dynamic Integration of Modular Expertise in Model Merging", NeurIPS 2024,
arXiv:2406.15479. Code: ``LZY-the-boys/Twin-Merging`` (``discriminative/twin_merge.py``, ``sparsify.py``,
``config/twin_merge.yml``).

Per VLM target (tau_t = (alpha / r) B_t A_t)::

    tau*  = shared_scale * sum_t tau_t                       (the shared expert: Task Arithmetic)
    v_t   = top-k SVD of (tau_t - tau*),  k = floor((1 - mask_rate) * min(m, n))     (``sparsify.svd``)
    paper:  theta(x) = theta_0 + tau* + sum_t softmax(router(x))_t v_t
    here:   theta_m  = theta_0 + tau* + v_m                  (one-hot on the routed or true skill)

The SVD comes from the factors: ``tau_t - tau*`` is ``[L_t, -s L_1 .. -s L_T] [R_t; R_1; ..; R_T]``, exact.

Router, stated plainly: the paper's router is an MLP trained on a small validation set, and it mixes the twins
per input. Merging here sees no data, so there is no trained router: each skill runs with its own twin
(one-hot weights), which needs the skill at test time (``oracle`` or any named router, e.g.
``instruction_lookup`` or ``carve_text``). Parameters the code excludes from merging (classifier heads) stay
per task; our action expert, which has no pretrained base, is kept per skill likewise.

Stored: the shared VLM (theta_0 + tau*, whole, base dtype), per skill its twin factors ``U S`` (m x k) and
``V`` (n x k) per target in the base dtype, its action expert and norm stats. When k covers the rank of
tau_t - tau* (at most (T + 1) r for LoRA experts), each skill gets its expert back exactly. A target that is
not a matrix (norms and biases, which only a full fine-tune changes) has no SVD: its twin is stored whole.

Defaults and sources: ``shared_scale = 0.29`` (``twin_merge.yml``: ``second_merge_config.scaling``),
``mask_rate = 0.9`` (``scripts.sh``: the share of the rank removed; the code keeps 1 - mask_rate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods.base import OneShotMethod, TaskVectors
from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.io import AtomicDirectory, open_views
from vlamergebench.merge_methods.lowrank import LowRank, concatenated, task_factors, thin_svd
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.merge_methods.writers import (
    copy_action_expert,
    factor_deltas,
    target_names,
    write_factor_parts,
    write_vlm,
)
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

TWIN_FILE = "twin.safetensors"


@dataclass(frozen=True)
class TwinConfig(MethodConfig):
    """Twin-Merging parameters.

    Attributes:
        shared_scale: Task Arithmetic scale of the shared expert (0.29: ``twin_merge.yml``).
        mask_rate: Share of each twin's rank removed (0.9: ``scripts.sh``).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    shared_scale: float = 0.29
    mask_rate: float = 0.9
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_fraction(owner, "mask_rate", self.mask_rate)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def twin_factors(factors: Sequence[LowRank], shared_scale: float, mask_rate: float) -> list[LowRank]:
    """Each skill's twin ``tau_t - tau*`` truncated to ``floor((1 - mask_rate) min(m, n))`` directions."""
    rows, cols = factors[0].left.shape[0], factors[0].right.shape[1]
    keep = int((1.0 - mask_rate) * min(rows, cols))
    shared = concatenated(factors)
    twins = []
    for task in factors:
        difference = LowRank(torch.cat([task.left, -shared_scale * shared.left], dim=1),
                             torch.cat([task.right, shared.right], dim=0))  # fmt: skip
        u, s, v = thin_svd(difference)
        twins.append(LowRank((u[:, :keep] * s[:keep]).float(), v[:, :keep].T.float()))
    return twins


class TwinMerging(OneShotMethod[TwinConfig]):
    """Shared VLM + per-skill low-rank twins and action experts; one-hot on the skill at inference."""

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """One pass: the shared VLM streamed out, each target's (low-rank) twins kept until the end."""
        config: TwinConfig = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)
        vlm, targets = base.file(VLM_FILE), target_names(base, views)
        twins: dict[str, list[LowRank]] = {}
        whole: dict[str, list[torch.Tensor]] = {}  # twins of tensors that are not matrices

        def shared_delta(name: str, weight: torch.Tensor) -> torch.Tensor:
            if weight.ndim != 2:
                stacked = TaskVectors(name, weight, views).stacked()
                shared = stacked.sum(dim=0).mul_(config.shared_scale)
                whole[name] = list(stacked - shared)
                return shared
            factors = [task_factors(view, name, weight) for view in views]
            twins[name] = twin_factors(factors, config.shared_scale, config.mask_rate)
            return concatenated(factors).dense().mul_(config.shared_scale)

        write_vlm(work.file(VLM_FILE), base, shared_delta, targets, progress)
        head = base.file(ACTION_EXPERT_FILE).names
        for index, view in enumerate(views):
            parts: dict[str, torch.Tensor] = {}
            for name in targets:
                if name in whole:
                    parts[name + ".whole"] = whole[name][index]
                else:
                    parts[name + ".US"] = twins[name][index].left
                    parts[name + ".V"] = twins[name][index].right.T
            write_factor_parts(work.file(f"{skill_dir(index)}/{TWIN_FILE}"), vlm, parts)
            copy_action_expert(work.file(f"{skill_dir(index)}/{ACTION_EXPERT_FILE}"), view, head)
        return {"twin_rank": {name: twins[name][0].left.shape[1] for name in targets if name in twins}}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``theta_0 + tau* + v_m`` on the targets; the skill's own action expert."""
        folder = skill_dir(model.skill_index(skill))
        tensors = read_all(model.tensor_file(VLM_FILE))
        for name, twin in factor_deltas(model.tensor_file(f"{folder}/{TWIN_FILE}")):
            weight = tensors[name]
            tensors[name] = (weight.float() + twin.float()).to(weight.dtype)
        tensors.update(read_all(model.tensor_file(f"{folder}/{ACTION_EXPERT_FILE}")))
        return tensors
