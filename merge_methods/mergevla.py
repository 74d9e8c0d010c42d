"""MergeVLA (``mergevla``, ``mergevla_<rule>``): task masks over a merged task vector, per-skill heads.

Paper: Fu et al., "MergeVLA: Cross-Skill Model Merging Toward a Generalist Vision-Language-Action Agent", CVPR
2026, arXiv:2511.18810. Code: ``MergeVLA/MergeVLA`` (``model_merging/mergy.py``, the bundled FusionBench
``method/tall_mask/*``, ``prismatic/models/moe_model.py``).

VLM (LoRA targets; tau_t in float32)::

    tau_merge = sum_t tau_t                     (merge = "ta": mergy.py's default "TATallMask")
              = TIES without trim: elect sign by sum, disjoint *sum*    (merge = "ties": the 90.2 headline)
              = TSV-M, WUDI or KnOTS of the tau_t with each method's registered defaults (``tsv.py``,
                ``wudi.py``, ``knots.py``)                              (merge = "tsv" / "wudi" / "knots")
                (a tensor that is not a matrix, which only a full fine-tune changes, takes the mean under
                these three: it has no SVD)
              = EMR's tau_uni, with EMR's masks M_m and rescalers lambda_m in place of the TALL masks:
                W_m = W_0 + lambda_m M_m * tau_uni  (``emr.py``)        (merge = "emr")
    S_m       = 1[|tau_m| > mask_strength * |tau_merge - tau_m|]       (TALL mask, strict >)
    W_m       = W_0 + S_m * tau_merge            (tau_merge stored in the base dtype, masks bit-packed)

Action expert (no base): blocks ``0 .. B-1-depth``, the input ``layer_norm1``/``fc1``, the action queries and
the proprio projector are averaged (``weighted_average``); the last ``depth`` blocks plus the output
``layer_norm2`` and ``fc2`` are kept per skill ("expert heads").

Router keys (``mergevla_value_subspace``): for each skill, the top ``router_rank`` right singular vectors of
*that expert's own* ``v_adapter`` and ``v_task`` weights in the last shared block (``B-1-depth``).

Defaults and sources: ``mask_strength = 0.6`` (hard-coded in MergeVLA and FusionBench; TALL masks tune it per
task in {0.2..0.6}); ``router_rank = 8`` (``k_gate``); ``expert_head_depth = None`` reads the policy config's
``action_expert.expert_head_depth`` (1 = mergy.py's ``action_head_layer_num``). Deviation: masks are
bit-packed (1 bit per entry) where the code saves ``torch.bool`` (1 byte), so storage is the ideal figure;
the state records the as-shipped byte count too. The README's table reports six rules inside this framework
(TIES 90.2, WUDI 89.9, TA 89.7, KnOTS 88.0, TSV 81.6, EMR 65.5 average LIBERO success); the registered
variants ``mergevla`` (TA), ``mergevla_ties``, ``_wudi``, ``_knots``, ``_tsv`` and ``_emr`` rerun that table
row by row on any expert set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import OneShotMethod, TaskVectors
from vlamergebench.merge_methods.config import MethodConfig, check_choice
from vlamergebench.merge_methods.emr import emr_elect, rescaler_terms, rescalers
from vlamergebench.merge_methods.io import (
    AtomicDirectory,
    MergeInputError,
    StreamingSafetensorsWriter,
    open_views,
    reads_base,
)
from vlamergebench.merge_methods.knots import KnotsConfig, knots_merge
from vlamergebench.merge_methods.lowrank import LowRank, task_factors
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.merge_methods.tsv import TsvConfig, tsv_merge
from vlamergebench.merge_methods.writers import copy_action_expert, target_names, write_action_expert
from vlamergebench.merge_methods.wudi import WudiConfig, wudi_merge
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

TAU_MERGE_FILE = "tau_merge.safetensors"
MASK_FILE = "masks.safetensors"
HEAD_FILE = "expert_head.safetensors"
ROUTER_FILE = "router.safetensors"
OUTPUT_PREFIXES = ("action_head.layer_norm2.", "action_head.fc2.")  # MergeVLA's per-expert LN2 and fc2
_BLOCK = re.compile(r"^action_head\.blocks\.(\d+)\.")


MERGE_RULES = ("ta", "ties", "tsv", "wudi", "knots", "emr")
FACTOR_RULES = ("tsv", "wudi", "knots")  # rules on a matrix's SVD: a tensor that is no matrix takes the mean


@dataclass(frozen=True)
class MergeVLAConfig(MethodConfig):
    """MergeVLA parameters.

    Attributes:
        merge: tau_merge rule: "ta" (plain sum, mergy.py default), "ties" (no trim, disjoint sum), "tsv",
            "wudi", "knots" (those methods' defaults) or "emr" (EMR's masks and rescalers).
        mask_strength: lambda of the task mask (0.6, hard-coded upstream).
        expert_head_depth: Blocks kept per skill; None = the policy config's value (1 for LIBERO).
        expert_heads: False averages the whole action expert, output layers included (MergeVLA's ablation
            "w/o expert head"); the router keys still come from the block ``expert_head_depth`` splits at.
        router_rank: Right singular vectors per value projection in the router keys (8 = k_gate).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    merge: str = "ta"
    mask_strength: float = 0.6
    expert_head_depth: int | None = None
    expert_heads: bool = True
    router_rank: int = 8
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "merge", self.merge, MERGE_RULES)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def split_action_expert(names: list[str], depth: int) -> tuple[list[str], list[str], int]:
    """(shared names, per-skill names, index of the last shared block) of an action expert."""
    blocks = {int(match.group(1)) for name in names if (match := _BLOCK.match(name))}
    if not blocks or depth < 0 or depth >= len(blocks):
        raise MergeInputError(
            f"action expert has {len(blocks)} blocks; expert_head_depth {depth} leaves no shared block"
        )
    first_expert_block = len(blocks) - depth
    per_skill = [
        n
        for n in names
        if n.startswith(OUTPUT_PREFIXES)
        or ((match := _BLOCK.match(n)) is not None and int(match.group(1)) >= first_expert_block)
    ]
    return [n for n in names if n not in set(per_skill)], per_skill, first_expert_block - 1


def merged_and_masks(
    rule: str, stacked: torch.Tensor, factors: list[LowRank] | None, mask_strength: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau_merge, per-skill masks ``(T, ...)`` bool) of one target by ``rule``."""
    if rule == "emr":
        return emr_elect(stacked)
    if rule == "ta":
        merged = stacked.sum(dim=0)
    elif rule == "mean":
        merged = stacked.mean(dim=0)
    elif rule == "ties":
        merged = ops.disjoint_merge(stacked, ops.elect_sign(stacked), "sum")
    elif rule == "tsv":
        merged = tsv_merge(factors).mul_(TsvConfig().alpha)
    elif rule == "wudi":
        defaults = WudiConfig()
        merged = wudi_merge(factors, defaults.iterations, defaults.step_size)
    else:
        defaults = KnotsConfig()
        merged = knots_merge(factors, defaults.keep_fraction).mul_(defaults.scale)
    return merged, torch.stack([ops.tall_mask(tau, merged, mask_strength) for tau in stacked])


def value_subspace_keys(weight: torch.Tensor, rank: int) -> torch.Tensor:
    """Top ``rank`` right singular vectors of a value projection ``(out, in)``, as rows ``(rank, in)``."""
    return torch.linalg.svd(weight.float(), full_matrices=False).Vh[:rank].contiguous()


class MergeVLA(OneShotMethod[MergeVLAConfig]):
    """Task-masked VLM over tau_merge, shared + per-skill action expert, value-subspace router keys."""

    base_files = (VLM_FILE,)

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """One pass over the targets writes tau_merge and every skill's mask; then heads and router keys."""
        config = self.config
        base, views = open_views(experts.base, experts.experts, config.task_vectors)
        vlm, targets = base.file(VLM_FILE), target_names(base, views)
        tau_writer = StreamingSafetensorsWriter(
            work.file(TAU_MERGE_FILE), [(n, vlm.dtype(n), vlm.shape(n)) for n in targets]
        )
        mask_specs = [(n, torch.uint8, ((torch.Size(vlm.shape(n)).numel() + 7) // 8,)) for n in targets]
        mask_writers = [
            StreamingSafetensorsWriter(work.file(f"{skill_dir(i)}/{MASK_FILE}"), mask_specs)
            for i in range(len(views))
        ]
        kept, selfish, active = [0] * len(views), 0, 0
        rescaler_terms_by_target = []
        for name in targets:
            weight = vlm.read(name) if reads_base(views) else None
            factors = None
            rule = config.merge
            if rule in FACTOR_RULES and len(vlm.shape(name)) != 2:
                rule = "mean"  # a full fine-tune's norms and biases: no SVD (TSV's code takes the mean)
            if rule in FACTOR_RULES:
                factors = [task_factors(view, name, weight) for view in views]
                stacked = torch.stack([task.dense() for task in factors])
            else:
                stacked = TaskVectors(name, weight, views).stacked()
            merged, masks = merged_and_masks(rule, stacked, factors, config.mask_strength)
            if config.merge == "emr":
                rescaler_terms_by_target.append(rescaler_terms(stacked, merged, masks))
            tau_writer.write(name, merged.to(vlm.dtype(name)))
            counts = torch.zeros(merged.shape, dtype=torch.int16)
            for index, (writer, mask) in enumerate(zip(mask_writers, masks, strict=True)):
                writer.write(name, ops.pack_bits(mask))
                kept[index] += int(mask.sum())
                counts += mask
            selfish, active = selfish + int((counts == 1).sum()), active + int((counts > 0).sum())
        for writer in (tau_writer, *mask_writers):
            writer.close()
        depth = config.expert_head_depth
        if depth is None:
            depth = int(experts.base.config["policy"]["action_expert"]["expert_head_depth"])
        head_names = base.file(ACTION_EXPERT_FILE).names
        shared, per_skill, router_block = split_action_expert(head_names, depth)
        if not config.expert_heads:
            shared, per_skill = list(head_names), []
        write_action_expert(work.file(ACTION_EXPERT_FILE), base, views, shared)
        keys: dict[str, torch.Tensor] = {}
        for index, view in enumerate(views):
            copy_action_expert(work.file(f"{skill_dir(index)}/{HEAD_FILE}"), view, per_skill)
            for branch in ("v_adapter", "v_task"):
                weight = view.action_expert(f"action_head.blocks.{router_block}.{branch}.weight")
                keys[f"{index:02d}.{branch}"] = value_subspace_keys(weight, config.router_rank)
        from safetensors.torch import save_file

        save_file(keys, str(work.file(ROUTER_FILE)))
        numel = sum(torch.Size(vlm.shape(n)).numel() for n in targets)
        scales = rescalers(rescaler_terms_by_target) if config.merge == "emr" else [1.0] * len(views)
        return {
            "rescalers": dict(zip(experts.skills, scales, strict=True)),
            "expert_head_depth": depth if config.expert_heads else 0,
            "router_block": router_block,
            "mask_density": {view.skill: kept[i] / max(numel, 1) for i, view in enumerate(views)},
            "selfish_fraction": selfish / max(active, 1),
            "masks_as_shipped_bytes": numel * len(views),  # upstream saves torch.bool: 1 byte per entry
        }

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``W_0 + S_m * tau_merge`` (times lambda_m for EMR) on the targets; shared + the skill's head."""
        folder = skill_dir(model.skill_index(skill))
        tensors = read_all(model.base_file(VLM_FILE))
        tau_file, mask_file = model.tensor_file(TAU_MERGE_FILE), model.tensor_file(f"{folder}/{MASK_FILE}")
        scale = float(model.state.get("rescalers", {}).get(skill, 1.0))  # EMR's lambda_m; 1 otherwise
        for name in tau_file.names:
            weight = tensors[name]
            masked = ops.unpack_bits(mask_file.read(name), weight.shape) * tau_file.read(name).float()
            tensors[name] = (weight.float() + (masked if scale == 1.0 else scale * masked)).to(weight.dtype)
        tensors.update(read_all(model.tensor_file(ACTION_EXPERT_FILE)))
        tensors.update(read_all(model.tensor_file(f"{folder}/{HEAD_FILE}")))
        return tensors
