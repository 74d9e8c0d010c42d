"""Routers: pick a skill once per episode, and record every decision.

Every router is built from a merged model (``MergedModel.router(name)`` or ``ROUTERS.make(name, model=...)``),
so any method can run with ``oracle``, its own router, or another method's. The call is
``route(observation, *, true_skill=None) -> str``: the evaluator passes the true skill on every call (only the
oracle may read it), and each call appends a :class:`RoutingDecision` (chosen skill, true skill, every
candidate's score) to ``router.history``, from which routing accuracy and the confusion matrix follow. Ties
go to the skill that comes first in the expert set.

- ``oracle``: the true skill.
- ``instruction_lookup``: exact (case- and space-normalised) match of the instruction against each skill's
  training instructions; a perfect router on unperturbed LIBERO, and a useful control.
- ``mergevla_value_subspace`` (MergeVLA, arXiv:2511.18810): candidate m runs *its own* instantiated policy and
  scores ``s_m = (mean_tokens ||R_m,a h_a|| + mean_tokens ||R_m,t h_t||) / 2`` on the LLM states of the
  action queries (h_a, without the proprio token) and the image tokens (h_t) at the layer the first
  per-expert head block consumes (layer L + 1 - depth of L, the final layer for depth 1, as upstream), with R
  the top-k right singular vectors of the last shared block's ``v_adapter`` / ``v_task`` weights (stored by
  ``mergevla``, else computed from each skill's instantiated head). Cost: M policy forwards per episode.
  Upstream routes once per suite; we route per episode.
- ``carve_text`` (CARVE): cosine similarity between the L2-normalised mean-pooled final-layer LLM embedding of
  the episode instruction and each skill's key, the normalised mean of its training instructions' embeddings,
  both through the probe LLM (``theta_0 + core`` for CARVE, the base LLM for other methods). We embed the
  policy's own prompt template around the instruction (CARVE re-templates OpenVLA's prompt).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlamergebench.merge_methods.merged import MergedModel
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, VLM_FILE


@dataclass(frozen=True)
class RoutingDecision:
    """One routing call: what was chosen, what was true (if given), and every candidate's score."""

    chosen: str
    true_skill: str | None
    scores: Mapping[str, float]


class Router(ABC):
    """Base class: ``route`` takes the argmax of ``scores`` and records the decision."""

    def __init__(self, skills: Sequence[str]) -> None:
        """Route among ``skills`` (in expert-set order)."""
        self.skills = list(skills)
        self.history: list[RoutingDecision] = []

    @abstractmethod
    def scores(self, observation: Mapping[str, Any], true_skill: str | None) -> dict[str, float]:
        """A score per skill; higher is more likely."""

    def route(self, observation: Mapping[str, Any], *, true_skill: str | None = None) -> str:
        """The chosen skill for this episode (recorded in ``history``)."""
        if true_skill is not None and true_skill not in self.skills:
            raise KeyError(f"true skill {true_skill!r} is not one of the router's skills {self.skills}")
        scores = self.scores(observation, true_skill)
        chosen = max(self.skills, key=lambda skill: (scores[skill], -self.skills.index(skill)))
        self.history.append(RoutingDecision(chosen, true_skill, dict(scores)))
        return chosen


class OracleRouter(Router):
    """The true skill, as the evaluator gives it."""

    def __init__(self, model: MergedModel | None = None, skills: Sequence[str] | None = None) -> None:
        """Route among the model's skills (or ``skills``)."""
        super().__init__(skills if skills is not None else model.skills)

    def scores(self, observation: Mapping[str, Any], true_skill: str | None) -> dict[str, float]:
        """1 for the true skill, 0 elsewhere; without a true skill the oracle cannot route."""
        if true_skill is None:
            raise ValueError("the oracle router needs route(observation, true_skill=...)")
        return {skill: float(skill == true_skill) for skill in self.skills}


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


class InstructionLookupRouter(Router):
    """Exact match of the observation's instruction against each skill's training instructions."""

    def __init__(self, model: MergedModel, instruction_key: str = "instruction") -> None:
        """Index the model's per-skill instructions."""
        super().__init__(model.skills)
        self.instruction_key = instruction_key
        self.known = {
            skill: {_normalise(text) for text in model.instructions(skill)} for skill in self.skills
        }

    def scores(self, observation: Mapping[str, Any], true_skill: str | None) -> dict[str, float]:
        """1 where the instruction is one of the skill's, else 0."""
        text = _normalise(str(observation[self.instruction_key]))
        return {skill: float(text in self.known[skill]) for skill in self.skills}


def value_subspace_score(
    keys_adapter: torch.Tensor, keys_task: torch.Tensor, h_adapter: torch.Tensor, h_task: torch.Tensor
) -> float:
    """MergeVLA's score: mean token norm of the projections onto the two key subspaces, averaged.

    Args:
        keys_adapter: ``(k, hidden)`` rows spanning the ``v_adapter`` input subspace.
        keys_task: ``(k, hidden)`` the same for ``v_task``.
        h_adapter: ``(queries, hidden)`` final-layer states at the action queries.
        h_task: ``(tokens, hidden)`` final-layer states at the image tokens.
    """
    adapter = (h_adapter.float() @ keys_adapter.float().T).norm(dim=-1).mean()
    task = (h_task.float() @ keys_task.float().T).norm(dim=-1).mean()
    return float(0.5 * (adapter + task))


def _policy(
    model: MergedModel, tensors: Mapping[str, torch.Tensor], skill: str, tokenizer_dir: str | None
) -> Any:
    from vlamergebench.policies.config import VLAConfig
    from vlamergebench.policies.policy import VLAPolicy

    config = VLAConfig.from_dict(model.policy_config)
    return VLAPolicy.from_state_dict(
        config,
        tensors,
        model.norm_stats(skill),
        tokenizer_dir=tokenizer_dir,
        source=f"{model.path} skill {skill!r}",
    )


class ValueSubspaceRouter(Router):
    """MergeVLA's test-time router (see the module docstring)."""

    def __init__(self, model: MergedModel, tokenizer_dir: str | None = None) -> None:
        """Load (or compute) each skill's keys; candidate policies are built on first use."""
        super().__init__(model.skills)
        self.model, self.tokenizer_dir = model, tokenizer_dir
        self._policies: dict[str, Any] = {}
        self.keys: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        from vlamergebench.merge_methods.mergevla import split_action_expert, value_subspace_keys

        depth = int(
            model.config.get("expert_head_depth") or model.policy_config["action_expert"]["expert_head_depth"]
        )
        names = [n for n in model.base_file(ACTION_EXPERT_FILE).names if n.startswith("action_head.")]
        _, _, last_shared = split_action_expert(names, depth)
        # Hidden-state entry i feeds head block i: score the states the first per-expert block reads.
        self.state_index = last_shared + 1
        if (model.path / "router.safetensors").is_file():
            stored = model.tensor_file("router.safetensors")
            for index, skill in enumerate(self.skills):
                self.keys[skill] = (stored.read(f"{index:02d}.v_adapter"), stored.read(f"{index:02d}.v_task"))
        else:
            rank = int(model.config.get("router_rank", 8))
            for skill in self.skills:
                tensors = model.instantiate(skill).tensors
                block = last_shared
                self.keys[skill] = tuple(
                    value_subspace_keys(tensors[f"action_head.blocks.{block}.{b}.weight"], rank)
                    for b in ("v_adapter", "v_task")
                )

    def candidate(self, skill: str) -> Any:
        """The policy of ``skill`` (its own masked VLM and head), built once."""
        if skill not in self._policies:
            weights = self.model.instantiate(skill)
            self._policies[skill] = _policy(self.model, weights.tensors, skill, self.tokenizer_dir)
        return self._policies[skill]

    def scores(self, observation: Mapping[str, Any], true_skill: str | None) -> dict[str, float]:
        """One forward per candidate; the score of its final-layer states in its key subspaces."""
        result = {}
        for skill in self.skills:
            states = self.candidate(skill).hidden_states([observation])
            keys_adapter, keys_task = self.keys[skill]
            result[skill] = value_subspace_score(
                keys_adapter, keys_task, states.action[0, self.state_index], states.task[0, self.state_index]
            )
        return result


class TextRouter(Router):
    """CARVE's instruction-embedding router (see the module docstring)."""

    def __init__(self, model: MergedModel, tokenizer_dir: str | None = None) -> None:
        """Build the probe LLM and every skill's key from the model's stored instructions."""
        from vlamergebench.policies.config import VLAConfig
        from vlamergebench.policies.llm import build_llm
        from vlamergebench.policies.tokenizer import make_tokenizer

        super().__init__(model.skills)
        config = VLAConfig.from_dict(model.policy_config)
        self.template = config.llm.prompt_template
        self.tokenizer = make_tokenizer(config.llm.tokenizer, config.llm.vocab_size, tokenizer_dir)
        self.instruction_key = config.instruction_key
        probe = getattr(model.method, "probe_tensors", None)
        if probe is not None:
            tensors = probe(model)
        else:  # methods without a probe state embed with the base LLM
            vlm = model.base_file(VLM_FILE)
            tensors = {name: vlm.read(name) for name in vlm.names if name.startswith("llm.")}
        self.llm = build_llm(config.llm).eval()
        self.llm.load_state_dict(
            {n[len("llm.") :]: t.float() for n, t in tensors.items() if n.startswith("llm.")}
        )
        self.llm.float()
        self.keys = {}
        for skill in self.skills:
            mean = torch.stack([self.embed(text) for text in model.instructions(skill)]).mean(dim=0)
            self.keys[skill] = mean / mean.norm().clamp(min=1e-12)

    @torch.inference_mode()
    def embed(self, instruction: str) -> torch.Tensor:
        """L2-normalised token mean of the final (post-norm) LLM states of the prompted instruction."""
        from vlamergebench.policies.llm import run_llm

        ids = torch.tensor([self.tokenizer.prompt_ids(self.template, instruction)])
        embeddings = self.llm.get_input_embeddings()(ids)
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        pooled = run_llm(self.llm, embeddings, None, positions)[-1][0].mean(dim=0)
        return pooled / pooled.norm().clamp(min=1e-12)

    def scores(self, observation: Mapping[str, Any], true_skill: str | None) -> dict[str, float]:
        """Cosine similarity of the instruction's embedding with each key."""
        query = self.embed(str(observation[self.instruction_key]))
        return {skill: float(query @ key) for skill, key in self.keys.items()}
