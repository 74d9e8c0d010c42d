"""The canonical VLA (MergeVLA on VLA-Adapter) as one ``nn.Module`` (its evaluation face: policies/policy.py).

Sequence layout (upstream ``_build_multimodal_attention`` + ``_prepare_input_for_action_prediction``)::

    [prompt id 0] [patches of image 0, image 1] [prompt ids 1..] [pad..] [action queries] [stop id]

Action-query embeddings are learned (``action_queries``, zero-initialised) and replace placeholder tokens.
Prompts of different lengths are padded *before* the queries, with an attention mask and position ids that
skip the padding, so every sample sees the positions of its unpadded sequence and the queries sit at one index
for the whole batch. The proprio token enters the head only, not the LLM (upstream).

Bridge: the head's block i reads LLM hidden state i + 1 (of ``num_layers + 1``; 0 is the embeddings) at the
patch positions (``h_t``) and at the query positions (``h_a``). Upstream's older slicing took the first 512
positions of the sequence (prompt id 0 and patches 0..510); its current code strips the first token first and
reads exactly the patches, which is what we do.

Tensor names are the checkpoint format's (``docs/formats.md`` section 3): ``vision.featurizer.*``,
``vision.fused_featurizer.*``, ``projector.fc{1,2,3}.*``, ``llm.*``, ``action_queries.weight``,
``proprio_projector.*``, ``action_head.*``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from vlamergebench.policies.action_expert import ActionExpert, ProprioProjector
from vlamergebench.policies.checkpoint import NormStats
from vlamergebench.policies.config import VLAConfig
from vlamergebench.policies.llm import build_llm, run_llm
from vlamergebench.policies.vision import Projector, VisionBackbone

HEAD_PREFIXES = ("action_head.", "proprio_projector.")


@dataclass(frozen=True)
class PromptBatch:
    """Prompt ids of a batch, right-padded.

    Attributes:
        ids: ``(batch, length)`` int64; column 0 is the id the patches follow.
        mask: ``(batch, length)`` 1 for real ids, 0 for padding.
    """

    ids: Tensor
    mask: Tensor

    @classmethod
    def from_lists(cls, prompts: Sequence[Sequence[int]], pad_id: int) -> PromptBatch:
        """Pad a list of id lists (each at least one id long)."""
        if not prompts or min(len(p) for p in prompts) < 1:
            raise ValueError("every prompt needs at least one token id")
        length = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), length), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(list(prompt), dtype=torch.long)
            mask[row, : len(prompt)] = 1
        return cls(ids=ids, mask=mask)


@dataclass(frozen=True)
class BridgeStates:
    """The LLM hidden states the head reads, one entry per head block.

    Attributes:
        task: ``(batch, blocks, task tokens, hidden)``; entry i is LLM hidden state i + 1 at the patches
            (``h_t`` of head block i). Entry ``blocks - 1`` is the final, post-norm layer.
        action: ``(batch, blocks, queries, hidden)``; the same at the action-query positions (``h_a``, without
            the proprio token).
    """

    task: Tensor
    action: Tensor


class VLA(nn.Module):
    """Vision towers, projector, Qwen2 LLM, action queries, proprio projector and action expert."""

    def __init__(self, config: VLAConfig) -> None:
        """Build with random weights (PyTorch/transformers initialisers; queries zero as upstream)."""
        super().__init__()
        self.config = config
        width = config.llm.hidden_size
        self.vision = VisionBackbone(config.vision)
        self.projector = Projector(config.vision.feature_dim, width, config.projector_expansion)
        self.llm = build_llm(config.llm)
        self.action_queries = nn.Embedding(config.num_action_queries, width)
        nn.init.zeros_(self.action_queries.weight)
        self.proprio_projector = ProprioProjector(config.proprio_dim, width)
        self.action_head = ActionExpert(
            width, config.num_head_blocks, config.chunk_size, config.action_dim, config.action_expert
        )

    def _sequence(self, images: Tensor, prompts: PromptBatch) -> tuple[Tensor, Tensor | None, Tensor, int]:
        patches = self.projector(self.vision(images))  # (batch, task tokens, hidden)
        embed = self.llm.get_input_embeddings()
        ids = prompts.ids.to(patches.device)
        batch = ids.shape[0]
        queries = self.action_queries.weight.unsqueeze(0).expand(batch, -1, -1)
        stop = embed(torch.full((batch, 1), self.config.llm.stop_token_id, device=ids.device))
        prompt = embed(ids).to(patches.dtype)
        embeddings = torch.cat(
            [prompt[:, :1], patches, prompt[:, 1:], queries.to(patches.dtype), stop.to(patches.dtype)], dim=1
        )
        ones = torch.ones(batch, 1, dtype=torch.long, device=ids.device)
        mask = torch.cat(
            [
                prompts.mask[:, :1].to(ids.device),
                ones.expand(-1, patches.shape[1]),
                prompts.mask[:, 1:].to(ids.device),
                ones.expand(-1, queries.shape[1] + 1),
            ],
            dim=1,
        )
        position_ids = mask.cumsum(dim=1) - 1
        query_start = patches.shape[1] + ids.shape[1]
        return embeddings, (None if bool(mask.all()) else mask), position_ids, query_start

    def bridge_states(self, images: Tensor, prompts: PromptBatch) -> BridgeStates:
        """The hidden states every head block reads (what MergeVLA's router scores).

        Args:
            images: ``(batch, num_images, 3, S, S)`` in [0, 1], already cropped to the policy's view.
            prompts: The tokenised prompts.
        """
        embeddings, mask, position_ids, query_start = self._sequence(images, prompts)
        hidden = run_llm(self.llm, embeddings, mask, position_ids)[1:]  # layer outputs 1..L
        tokens, queries = self.config.num_task_tokens, self.config.num_action_queries
        task = torch.stack([h[:, 1 : 1 + tokens] for h in hidden], dim=1)
        action = torch.stack([h[:, query_start : query_start + queries] for h in hidden], dim=1)
        return BridgeStates(task=task, action=action)

    def forward(
        self, images: Tensor, proprio: Tensor, prompts: PromptBatch, input_noise: Tensor | None = None
    ) -> Tensor:
        """Normalised action chunks ``(batch, chunk, action_dim)``.

        Args:
            images: ``(batch, num_images, 3, S, S)`` in [0, 1].
            proprio: ``(batch, proprio_dim)`` normalised to [-1, 1].
            prompts: The tokenised prompts.
            input_noise: Optional noise on the head's zero input (training).
        """
        states = self.bridge_states(images, prompts)
        proprio_token = self.proprio_projector(proprio.to(states.task.dtype))
        return self.action_head(states.task, states.action, proprio_token, input_noise)


def build_model(config: VLAConfig, seed: int) -> VLA:
    """A ``VLA`` initialised from ``seed``, without touching the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VLA(config)


def init_head(model: VLA, seed: int) -> None:
    """Re-initialise the action head and proprio projector from ``seed`` (shared by all experts of a base).

    Upstream's ``finetune.py`` sets no seed, so every expert's head starts from a different random draw; a
    fixed, recorded seed makes the experts of one base start from the same head.
    """
    config = model.config
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ActionExpert(
            config.llm.hidden_size,
            config.num_head_blocks,
            config.chunk_size,
            config.action_dim,
            config.action_expert,
        )
        proprio = ProprioProjector(config.proprio_dim, config.llm.hidden_size)
    model.action_head.load_state_dict(head.state_dict())
    model.proprio_projector.load_state_dict(proprio.state_dict())


def load_tensors(model: nn.Module, tensors: Mapping[str, Tensor], source: str) -> None:
    """Load a complete state dict strictly: missing/unexpected names and shape mismatches raise, named."""
    from vlamergebench.policies.checkpoint import CheckpointError

    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: {len(missing)} missing tensor(s) {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"{len(unexpected)} unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict(dict(tensors), strict=True, assign=False)


def normalize_proprio(proprio: np.ndarray, stats: NormStats) -> np.ndarray:
    """Map ``[q01, q99]`` to [-1, 1] and clip (upstream's BOUNDS_Q99 proprio normalisation)."""
    low, high = np.asarray(stats.proprio_q01), np.asarray(stats.proprio_q99)
    return np.clip(2.0 * (proprio - low) / (high - low + 1e-8) - 1.0, -1.0, 1.0).astype(np.float32)


def normalize_actions(actions: np.ndarray, stats: NormStats) -> np.ndarray:
    """Map ``[q01, q99]`` to [-1, 1] where the mask is true (targets are clipped, as upstream's RLDS)."""
    low, high = np.asarray(stats.action_q01), np.asarray(stats.action_q99)
    scaled = np.clip(2.0 * (actions - low) / (high - low + 1e-8) - 1.0, -1.0, 1.0)
    return np.where(np.asarray(stats.action_mask), scaled, actions).astype(np.float32)


def unnormalize_actions(actions: np.ndarray, stats: NormStats) -> np.ndarray:
    """Inverse of ``normalize_actions``: ``0.5 (a + 1)(q99 - q01 + 1e-8) + q01`` where the mask is true."""
    low, high = np.asarray(stats.action_q01), np.asarray(stats.action_q99)
    return np.where(np.asarray(stats.action_mask), 0.5 * (actions + 1.0) * (high - low + 1e-8) + low, actions)
