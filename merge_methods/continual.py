"""Continual Task Arithmetic (``continual_ta``): CARVE's averaging baseline, admitting one expert at a time.

Source: CARVE's baseline code, ``anonymousprojectpage2/CARVE`` ``model_merging/continual_mergy.py``
(``merge_step``, ``assemble_model``; run config ``merge_method: average``), the "TA" rows of CARVE's Table 2;
Task Arithmetic itself is Ilharco et al., arXiv:2212.04089. FusionBench's continual weight average is the same
recurrence.

Admission of expert t (t = 1, 2, ...), per VLM target and per action-expert tensor::

    tau_bar_t = tau_bar_{t-1} + (tau_t - tau_bar_{t-1}) / t        (the running mean; tau_bar_0 = 0)
    head_t    = head_{t-1} + (head_expert_t - head_{t-1}) / t      (the action expert has no base: averaged)
    every skill seen so far: theta = theta_0 + tau_bar_t, with head_t

The code keeps the running *sum* and divides by t when it assembles a step; we keep the mean, which is the
same model and the same storage (one model's worth), and is the evaluated model after each admission.

State between admissions (its merged directory, all of it counted in storage): tau_bar on the targets and the
averaged action expert, both in the base dtype, and the count t; the base VLM is referenced. Only the newest
expert is read at each admission. Rounding: tau_bar is re-read in the base dtype each time (bfloat16 for real
checkpoints), so the stream accumulates one rounding per admission where a one-shot mean has one in total.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods.base import ContinualMethod, TaskVectors
from vlamergebench.merge_methods.config import MethodConfig, check_choice
from vlamergebench.merge_methods.io import AtomicDirectory, StreamingSafetensorsWriter, open_views
from vlamergebench.merge_methods.merged import MergedModel, read_all
from vlamergebench.merge_methods.writers import target_names
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE, ExpertSet

MEAN_FILE = "tau_mean.safetensors"


@dataclass(frozen=True)
class ContinualTaConfig(MethodConfig):
    """Continual Task Arithmetic parameters.

    Attributes:
        task_vectors: Where tau comes from: "lora" (factors) or "dense" (folded weights minus the base).
    """

    task_vectors: str = "lora"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "task_vectors", self.task_vectors, ("lora", "dense"))


def running_mean(previous: torch.Tensor, new: torch.Tensor, count: int) -> torch.Tensor:
    """``previous + (new - previous) / count`` in float32 (count = admissions including ``new``)."""
    return previous.float() + (new.float() - previous.float()) / count


class ContinualTaskArithmetic(ContinualMethod[ContinualTaConfig]):
    """One model after each admission: base + running mean of the task vectors; averaged action expert."""

    base_files = (VLM_FILE,)

    def write_admission(
        self, seen: ExpertSet, previous: MergedModel | None, work: AtomicDirectory, progress: bool
    ) -> Mapping[str, Any]:
        """Fold the newest expert into the running means, one tensor at a time."""
        config: ContinualTaConfig = self.config
        count = len(seen.experts)
        base, (view,) = open_views(seen.base, seen.experts[-1:], config.task_vectors)
        vlm, head = base.file(VLM_FILE), base.file(ACTION_EXPERT_FILE)
        earlier = previous.tensor_file(MEAN_FILE) if previous is not None else None
        names = [n for n in vlm.names if view.is_target(n) or (earlier is not None and n in earlier)]
        with StreamingSafetensorsWriter(
            work.file(MEAN_FILE), [(n, vlm.dtype(n), vlm.shape(n)) for n in names]
        ) as out:
            for name in names:
                weight = vlm.read(name) if view.source == "dense" else None
                tau = TaskVectors(name, weight, [view]).stacked()[0]
                before = (
                    earlier.read(name) if earlier is not None and name in earlier else torch.zeros_like(tau)
                )
                out.write(name, running_mean(before, tau, count).to(vlm.dtype(name)))
        previous_head = previous.tensor_file(ACTION_EXPERT_FILE) if previous is not None else None
        specs = [(n, head.dtype(n), head.shape(n)) for n in head.names]
        with StreamingSafetensorsWriter(work.file(ACTION_EXPERT_FILE), specs) as out:
            for name in head.names:
                new = view.action_expert(name)
                before = previous_head.read(name) if previous_head is not None else torch.zeros_like(new)
                out.write(name, running_mean(before, new, count).to(head.dtype(name)))
        return {"admitted": count, "targets": len(target_names(base, [view]))}

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """``theta_0 + tau_bar`` on the targets; the averaged action expert (the same for every skill)."""
        tensors = read_all(model.base_file(VLM_FILE))
        means = model.tensor_file(MEAN_FILE)
        for name in means.names:
            weight = tensors[name]
            tensors[name] = (weight.float() + means.read(name).float()).to(weight.dtype)
        tensors.update(read_all(model.tensor_file(ACTION_EXPERT_FILE)))
        return tensors
