"""Diagnostic hybrids: which half of a merged policy fails, the merged VLM or the merged action expert?

Not a merging method of any paper: a localisation tool for the leaderboard. ``<method>_own_head`` runs the
method's merged VLM with each skill's own (unmerged) action expert; ``<method>_own_vlm`` runs each skill's own
VLM (the base with its expert's LoRA) with the method's merged action expert. If a method fails but
``_own_head`` succeeds, the head is what breaks it; if ``_own_vlm`` fails too, the merged head alone does.
Both need task identity (each skill's own half is selected by the skill) and store the method's files plus
every skill's own half, so their storage is counted honestly but is not a method's storage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.base import OneShotMethod
from vlamergebench.merge_methods.config import MethodConfig, check_choice
from vlamergebench.merge_methods.io import AtomicDirectory
from vlamergebench.merge_methods.merged import MergedModel, read_all, skill_dir
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, LORA_FILE, VLM_FILE, ExpertSet

OWN_FILES = {"action_expert": ACTION_EXPERT_FILE, "vlm": LORA_FILE}
HEAD_PREFIXES = ("action_head.", "action_queries.", "proprio_projector.")


@dataclass(frozen=True)
class HybridConfig(MethodConfig):
    """A diagnostic hybrid.

    Attributes:
        method: The registered method whose merged half is kept (at its registered defaults).
        own: Which half each skill keeps of its own expert: ``action_expert`` or ``vlm``.
    """

    method: str = "ta"
    own: str = "action_expert"

    def __post_init__(self) -> None:
        check_choice(type(self).__name__, "own", self.own, tuple(OWN_FILES))


class Hybrid(OneShotMethod[HybridConfig]):
    """The inner method's merged model with one half replaced by each skill's own."""

    @property
    def needs_lora_factors(self) -> bool:  # type: ignore[override]
        """Each skill's own VLM is its LoRA; the inner method may need the factors too."""
        return self.config.own == "vlm" or bool(self._inner().needs_lora_factors)

    @property
    def base_files(self) -> tuple[str, ...]:
        """The inner method's base files, plus the base VLM that each skill's own LoRA folds into."""
        inner = tuple(self._inner().base_files)
        return inner if self.config.own == "action_expert" or VLM_FILE in inner else (*inner, VLM_FILE)

    def _inner(self) -> Any:
        from vlamergebench.merge_methods.registry import make_method

        inner = make_method(self.config.method)
        if inner.kind != "one_shot":
            raise ValueError(f"{self.name}: the hybrid needs a one-shot method, got {self.config.method!r}")
        return inner

    def write(self, experts: ExpertSet, work: AtomicDirectory, progress: bool) -> Mapping[str, Any]:
        """The inner method's files, then each skill's own half under its skill directory."""
        state = dict(self._inner().write(experts, work, progress))
        name = OWN_FILES[self.config.own]
        for index, expert in enumerate(experts.experts):
            work.file(f"{skill_dir(index)}/own_{name}").write_bytes(expert.file(name).read_bytes())
        if self.config.own == "vlm":
            state["lora_scales"] = [expert.lora_scale for expert in experts.experts]
        return state

    def instantiate(self, model: MergedModel, skill: str) -> dict[str, torch.Tensor]:
        """The inner method's skill tensors with the skill's own half put back."""
        tensors = self._inner().instantiate(model, skill)
        index = model.skill_index(skill)
        own = read_all(model.tensor_file(f"{skill_dir(index)}/own_{OWN_FILES[self.config.own]}"))
        if self.config.own == "action_expert":
            tensors.update(own)
            return tensors
        vlm = read_all(model.base_file(VLM_FILE))
        ops.fold_lora(vlm, own, float(model.state["lora_scales"][index]))
        return {**{k: v for k, v in tensors.items() if k.startswith(HEAD_PREFIXES)}, **vlm}
