"""Continual TA, TIES and TSV with or without masks (``continual_ta``, ``continual_ta_mask``, ...).

CARVE's Table 2 baselines, admitting one expert at a time (the registry lists every variant).

Sources. CARVE's baseline code (``anonymousprojectpage2/CARVE``, ``model_merging/continual_mergy.py``:
``merge_step``, ``assemble_model``; run config ``merge_method: average``) is the "TA" rows: a running mean.
Table 2 also has "TA-Mask", "TSV", "TSV-Mask" and, on MergeVLA experts, "TA-Mask + Expert Head" and
"TSV-Mask + Expert Head"; their code is not public (the MergeVLA script CARVE's launcher names is absent; the
launcher sets ``TALL_MASK_LAMBDA=0.6``). CARVE has no TIES row: continual TIES is FusionBench's
(``method/opcm/ties_merging.py``; ``scaling_factor 0.5``, ``threshold 20``, ``merge_func sum``). Papers: Task
Arithmetic arXiv:2212.04089, TIES arXiv:2306.01708, TSV arXiv:2412.00081, TALL masks arXiv:2405.07813,
MergeVLA arXiv:2511.18810.

Admission of expert t (t = 1, 2, ...), per VLM target, tau_t in float32, Delta_0 = 0::

    ta:    Delta_t = Delta_{t-1} + (tau_t - Delta_{t-1}) / t                            (running mean)
    ties:  Delta_1 = lam tau_1,  Delta_t = Delta_{t-1} + lam TIES(Delta_{t-1}, tau_t)
           TIES: each input trimmed to its top k by magnitude over all targets, elect sign(sum), disjoint sum
    tsv:   Delta_1 = tau_1,      Delta_t = TSV-M((t-1)/t Delta_{t-1}, tau_t / t)
           (TSV-M of two inputs: floor(min(m, n) / 2) triplets of each; a tensor that is not a matrix, which
           only a dense expert changes, takes the running mean as under ta: it has no SVD)
    masks: S_t = 1[|tau_t| > mask_strength |Delta_t - tau_t|]            (set once, at admission t)
    skill m after T admissions: theta_m = theta_0 + Delta_T      (with masks: theta_0 + S_m * Delta_T)
    head:  head_t = head_{t-1} + (head_expert_t - head_{t-1}) / t    (the action expert has no base: averaged)

With ``expert_heads`` the action expert is split as MergeVLA's (``mergevla.py``): the shared part averaged as
above, the last ``expert_head_depth`` blocks and the output layers kept per skill as admitted.

Readings where the sources are silent: TSV weights its two inputs as the running mean (TA's rows are a mean;
TSV-M keeps the singular values it is given, so one admission returns the expert); a mask compares tau_t with
the merged vector just after its admission (TALL's tau_MTL); masks and expert heads are never revised, so they
go stale as Delta moves. As FusionBench, ``ties`` scales the first expert too (lam tau_1, not the expert);
a zero sign sum elects 0 (``ops.py``), not FusionBench's majority sign.

State between admissions (the merged directory, all of it counted in storage): Delta on the targets and the
averaged action expert in the base dtype (re-read each time: one rounding per admission), the count; with
masks one bit per target entry per skill; with expert heads each skill's head tensors. The base VLM is
referenced; only the newest expert is read. Task identity: needed only with masks or expert heads (without,
every skill runs the one model).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import ContinualMethod
from vlamergebench.merge_methods.config import MethodConfig, check_choice, check_fraction
from vlamergebench.merge_methods.io import (
    AtomicDirectory,
    ExpertView,
    StreamingSafetensorsWriter,
    TensorFile,
    open_views,
)
from vlamergebench.merge_methods.lowrank import LowRank, dense_factors, task_factors
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.merge_methods.mergevla import split_action_expert
from vlamergebench.merge_methods.tsv import tsv_merge
from vlamergebench.merge_methods.writers import copy_action_expert
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

DELTA_FILE = "tau_merged.safetensors"
MASK_FILE = "masks.safetensors"
HEAD_FILE = "expert_head.safetensors"
RULES = ("ta", "ties", "tsv")


@dataclass(frozen=True)
class ContinualConfig(MethodConfig):
    """Continual baseline parameters.

    Attributes:
        rule: Delta's update: "ta" (CARVE's running mean), "ties" (FusionBench's continual TIES) or "tsv".
        masks: Keep a TALL mask per skill, set at its admission (the "-Mask" rows).
        mask_strength: The mask's lambda (0.6: CARVE's launcher, MergeVLA).
        expert_heads: Keep MergeVLA's expert heads per skill (the "+ Expert Head" rows); the depth is the
            policy config's ``action_expert.expert_head_depth``.
        ties_keep_fraction: Fraction of each TIES input kept by magnitude (0.2: FusionBench threshold 20).
        ties_scale: lam of the TIES rule (0.5: FusionBench scaling_factor).
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    rule: str = "ta"
    masks: bool = False
    mask_strength: float = 0.6
    expert_heads: bool = False
    ties_keep_fraction: float = 0.2
    ties_scale: float = 0.5
    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        owner = type(self).__name__
        check_choice(owner, "rule", self.rule, RULES)
        check_fraction(owner, "ties_keep_fraction", self.ties_keep_fraction)
        check_choice(owner, "task_vectors", self.task_vectors, ("lora", "dense"))


def running_mean(previous: torch.Tensor, new: torch.Tensor, count: int) -> torch.Tensor:
    """``previous + (new - previous) / count`` in float32 (count = admissions including ``new``)."""
    return previous.float() + (new.float() - previous.float()) / count


def continual_ties(
    previous: torch.Tensor, new: torch.Tensor, thresholds: tuple[float, float], scale: float
) -> torch.Tensor:
    """``Delta + lam TIES(Delta, tau)``: both trimmed at their cutoffs, sign elected, disjoint sum."""
    stacked = torch.stack([ops.trim_below(previous, thresholds[0]), ops.trim_below(new, thresholds[1])])
    return previous + scale * ops.disjoint_merge(stacked, ops.elect_sign(stacked), "sum")


def continual_tsv(previous: torch.Tensor, new: LowRank, count: int) -> torch.Tensor:
    """TSV-M of ``(t-1)/t Delta`` and ``tau_t / t``; of ``tau_1`` alone at t = 1."""
    if count == 1:
        return tsv_merge([new])
    earlier = dense_factors(previous)
    weighted = [
        LowRank(earlier.left * ((count - 1) / count), earlier.right),
        LowRank(new.left / count, new.right),
    ]
    return tsv_merge(weighted)


def global_cutoff(names: Sequence[str], read: Callable[[str], torch.Tensor], keep_fraction: float) -> float:
    """The k-th largest |x| over every tensor ``read(name)``, k = floor(keep_fraction * entries)."""
    return ops.stream_threshold(lambda: (read(name).abs() for name in names), keep_fraction)


def write_averaged_head(
    path: Path,
    head: TensorFile,
    names: Sequence[str],
    view: ExpertView,
    previous: TensorFile | None,
    count: int,
) -> None:
    """The running mean of the experts' action-expert tensors ``names``, in the base dtype."""
    with StreamingSafetensorsWriter(path, [(n, head.dtype(n), head.shape(n)) for n in names]) as out:
        for name in names:
            new = view.action_expert(name)
            before = previous.read(name) if previous is not None else torch.zeros_like(new)
            out.write(name, running_mean(before, new, count).to(head.dtype(name)))


def carry_skill_files(previous: MergedModel | None, work: AtomicDirectory, files: Sequence[str]) -> None:
    """Copy the earlier skills' own files (masks, heads) unchanged into the new state."""
    for index in range(len(previous.skills) if previous is not None else 0):
        for file in files:
            relative = f"{skill_dir(index)}/{file}"
            work.file(relative).write_bytes((previous.path / relative).read_bytes())


class Admission(NamedTuple):
    """What one admission reads: the newest expert's task vectors, the base files and the running state.

    Attributes:
        view: The newest expert's task-vector view.
        vlm: The base VLM file (shapes, dtypes; weights for dense task vectors).
        head: The base action-expert file.
        earlier: The running state written by the previous admission (None at the first).
        names: The tensors the state covers: the expert's targets and every tensor the state already held.
    """

    view: ExpertView
    vlm: TensorFile
    head: TensorFile
    earlier: TensorFile | None
    names: list[str]


def open_admission(
    seen: ExpertSet, previous: MergedModel | None, state_file: str, task_vectors: str
) -> Admission:
    """The inputs of admitting the newest expert of ``seen`` into the state in ``state_file``."""
    base, (view,) = open_views(seen.base, seen.experts[-1:], task_vectors)
    vlm = base.file(VLM_FILE)
    earlier = previous.tensor_file(state_file) if previous is not None else None
    names = [n for n in vlm.names if view.is_target(n) or (earlier is not None and n in earlier)]
    return Admission(view, vlm, base.file(ACTION_EXPERT_FILE), earlier, names)


class ContinualMerge(ContinualMethod[ContinualConfig]):
    """One merged task vector Delta after each admission; optional per-skill masks and expert heads."""

    base_files = (VLM_FILE,)

    def write_admission(
        self, seen: ExpertSet, previous: MergedModel | None, work: AtomicDirectory, progress: bool
    ) -> Mapping[str, Any]:
        """Fold the newest expert into Delta (and its mask), one tensor at a time; then the action expert."""
        config = self.config
        count = len(seen.experts)
        view, vlm, head, earlier, names = open_admission(seen, previous, DELTA_FILE, config.task_vectors)

        def weight(name: str) -> torch.Tensor | None:
            return vlm.read(name) if view.source == "dense" else None

        def before(name: str) -> torch.Tensor:
            if earlier is not None and name in earlier:
                return earlier.read(name).float()
            return torch.zeros(vlm.shape(name))

        def tau(name: str) -> torch.Tensor:
            return view.task_vector(name, weight(name))

        cutoffs = None
        if config.rule == "ties" and count > 1:
            cutoffs = (
                global_cutoff(names, before, config.ties_keep_fraction),
                global_cutoff(names, tau, config.ties_keep_fraction),
            )
        out = StreamingSafetensorsWriter(
            work.file(DELTA_FILE), [(n, vlm.dtype(n), vlm.shape(n)) for n in names]
        )
        mask_specs = [(n, torch.uint8, ((torch.Size(vlm.shape(n)).numel() + 7) // 8,)) for n in names]
        masks = (
            StreamingSafetensorsWriter(work.file(f"{skill_dir(count - 1)}/{MASK_FILE}"), mask_specs)
            if config.masks
            else None
        )
        kept = 0
        for name in names:
            if config.rule == "tsv" and len(vlm.shape(name)) == 2:
                factors = task_factors(view, name, weight(name))
                new, merged = factors.dense(), continual_tsv(before(name), factors, count)
            else:
                new = tau(name)
                if config.rule != "ties":  # tsv on a non-matrix: no SVD, the mean (as TSV's code)
                    merged = running_mean(before(name), new, count)
                elif cutoffs is None:
                    merged = config.ties_scale * new
                else:
                    merged = continual_ties(before(name), new, cutoffs, config.ties_scale)
            out.write(name, merged.to(vlm.dtype(name)))
            if masks is not None:
                mask = ops.tall_mask(new, merged, config.mask_strength)
                masks.write(name, ops.pack_bits(mask))
                kept += int(mask.sum())
        for writer in (out, masks):
            if writer is not None:
                writer.close()
        shared, own = list(head.names), []
        if config.expert_heads:
            depth = int(seen.base.config["policy"]["action_expert"]["expert_head_depth"])
            shared, own, _ = split_action_expert(head.names, depth)
            copy_action_expert(work.file(f"{skill_dir(count - 1)}/{HEAD_FILE}"), view, own)
        previous_head = previous.tensor_file(ACTION_EXPERT_FILE) if previous is not None else None
        write_averaged_head(work.file(ACTION_EXPERT_FILE), head, shared, view, previous_head, count)
        own_files = [MASK_FILE] if config.masks else []
        carry_skill_files(previous, work, own_files + ([HEAD_FILE] if config.expert_heads else []))
        state: dict[str, Any] = {"admitted": count, "targets": len(names)}
        if cutoffs is not None:
            state["ties_cutoffs"] = list(cutoffs)
        if config.masks:
            density = dict(previous.state["mask_density"]) if previous is not None else {}
            numel = sum(torch.Size(vlm.shape(n)).numel() for n in names)
            state["mask_density"] = {**density, view.skill: kept / max(numel, 1)}
        return state

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``theta_0 + Delta`` (``theta_0 + S_m * Delta`` with masks); averaged (+ the skill's) head."""
        folder = skill_dir(model.skill_index(skill))
        tensors = read_all(model.base_file(VLM_FILE))
        merged = model.tensor_file(DELTA_FILE)
        masks = model.tensor_file(f"{folder}/{MASK_FILE}") if self.config.masks else None
        for name in merged.names:
            if masks is not None and name not in masks:
                continue  # first targeted after this skill's admission: its tau there is 0, so is its mask
            weight = tensors[name]
            delta = merged.read(name).float()
            if masks is not None:
                delta = ops.unpack_bits(masks.read(name), weight.shape) * delta
            tensors[name] = (weight.float() + delta).to(weight.dtype)
        tensors.update(read_all(model.tensor_file(ACTION_EXPERT_FILE)))
        if self.config.expert_heads:
            tensors.update(read_all(model.tensor_file(f"{folder}/{HEAD_FILE}")))
        return tensors
