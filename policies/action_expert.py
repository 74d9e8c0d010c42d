"""The action expert (policy head) of VLA-Adapter and MergeVLA, one block per LLM layer.

Block i reads LLM hidden state i + 1 at two places: ``h_t``, the raw (patch) features, and ``h_a``, the
action-query features, to which the projected proprio token is appended. The head starts from a zero tensor
``(batch, chunk, action_dim * width)`` (plus N(0, 0.02^2) noise in training; upstream's "learnable random
perturbation" is a fresh, unregistered tensor each call, i.e. noise injection), maps it through
LayerNorm -> Linear -> ReLU to ``chunk`` tokens, runs the blocks, and ends LayerNorm -> Linear to
``(batch, chunk, action_dim)`` normalised actions. Every block ends ``x <- ReLU(Linear(LN(x + o)))``: a
residual into a one-layer FFN with no residual around the FFN (upstream's ``MLPResNetBlock*``).

Variants (``ActionExpertConfig.variant``; parameter names as upstream, so released heads load by renaming
``model.mlp_resnet_blocks`` to ``blocks``):

- ``mergevla`` (MergeVLA ``MLPResNetBlock_Pro``): no self-attention; queries ``q_proj_adapter`` and
  ``q_proj_task``; keys/values ``k_adapter``/``v_adapter`` over ``[h_a; p]`` and ``k_task``/``v_task`` over
  ``h_t``. Scores ``[q_a K_a^T, gate(g) * q_t K_t^T] / sqrt(d)`` go through ONE softmax over both key sets.
- ``vla_adapter`` (VLA-Adapter ``MLPResNetBlock``): one ``q_proj`` and shared ``k_proj``/``v_proj`` over
  ``[chunk tokens (self); h_a; p; h_t]``, the ``h_t`` logits scaled by ``tanh(g)``, no RoPE.
- ``vla_adapter_pro`` (``MLPResNetBlock_Pro`` of VLA-Adapter): one ``q_proj``, ``k_self``/``v_self`` over the
  chunk tokens plus the two cross branches, RoPE, and an unused ``film_gen`` kept for checkpoint parity.

The gate scales the raw-feature *logits*, acting as a temperature on that branch (upstream); ``gate`` picks
sigmoid (MergeVLA, 0.5 at init) or tanh (VLA-Adapter, 0 at init).

RoPE is upstream's exactly, quirk included: the angle table is ``cat([freqs, freqs])`` (half-split layout)
while the rotation pairs interleaved dimensions (2i, 2i+1), so each pair mixes two different frequencies.
Queries take positions 0..chunk-1; each key set counts its own positions from 0. Kept for weight
compatibility with released heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import Tensor, nn

from vlamergebench.policies.config import ActionExpertConfig


def rope_tables(
    length: int, head_dim: int, base: float, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Upstream's RoPE cos/sin tables, each ``(length, head_dim)`` with the half-split frequency layout."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x`` ``(batch, heads, length, head_dim)`` (upstream's ``apply_rope``)."""
    rotated = torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).reshape_as(x)
    return x * cos + rotated * sin


def _heads(x: Tensor, num_heads: int) -> Tensor:
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)  # (batch, heads, length, d)


def _merge_heads(x: Tensor) -> Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)


class _Block(nn.Module):
    """What every variant shares: the FFN, the output projection, the gate and the joint softmax."""

    def __init__(self, width: int, config: ActionExpertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = width // config.num_heads
        self.rope_base = config.rope_base
        self.gate_fn = torch.sigmoid if config.gate == "sigmoid" else torch.tanh
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU())
        self.o_proj = nn.Linear(width, width)
        self.gating_factor = nn.Parameter(torch.zeros(1))

    def _rope(self, x: Tensor) -> Tensor:
        cos, sin = rope_tables(x.shape[2], self.head_dim, self.rope_base, x.device, x.dtype)
        return apply_rope(x, cos, sin)

    def _attend(self, scores: list[Tensor], values: list[Tensor], x: Tensor) -> Tensor:
        weights = torch.softmax(torch.cat(scores, dim=-1) / math.sqrt(self.head_dim), dim=-1)
        out = self.o_proj(_merge_heads(weights @ torch.cat(values, dim=2)))
        return self.ffn(out + x)


class MergeVLABlock(_Block):
    """Cross-attention only: chunk tokens never attend to each other."""

    def __init__(self, width: int, config: ActionExpertConfig) -> None:
        super().__init__(width, config)
        self.q_proj_adapter = nn.Linear(width, width)
        self.k_adapter = nn.Linear(width, width)
        self.v_adapter = nn.Linear(width, width)
        self.q_proj_task = nn.Linear(width, width)
        self.k_task = nn.Linear(width, width)
        self.v_task = nn.Linear(width, width)

    def forward(self, x: Tensor, h_adapter: Tensor, h_task: Tensor) -> Tensor:
        """One block: ``x`` ``(batch, chunk, width)``, ``h_adapter`` ``[h_a; p]``, ``h_task`` ``h_t``."""
        n = self.num_heads
        q_adapter = self._rope(_heads(self.q_proj_adapter(x), n))
        q_task = self._rope(_heads(self.q_proj_task(x), n))
        k_adapter = self._rope(_heads(self.k_adapter(h_adapter), n))
        k_task = self._rope(_heads(self.k_task(h_task), n))
        scores = [
            q_adapter @ k_adapter.transpose(-2, -1),  # (batch, heads, chunk, adapter keys)
            q_task @ k_task.transpose(-2, -1) * self.gate_fn(self.gating_factor),  # (..., task keys)
        ]
        values = [_heads(self.v_adapter(h_adapter), n), _heads(self.v_task(h_task), n)]
        return self._attend(scores, values, x)


class VLAAdapterBlock(_Block):
    """The original block: self-attention plus both cross branches through shared projections, no RoPE."""

    def __init__(self, width: int, config: ActionExpertConfig) -> None:
        super().__init__(width, config)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, h_adapter: Tensor, h_task: Tensor) -> Tensor:
        """One block; key order ``[self, h_a; p, h_t]`` as upstream."""
        n = self.num_heads
        q = _heads(self.q_proj(x), n)
        keys = [_heads(self.k_proj(t), n) for t in (x, h_adapter, h_task)]
        scores = [q @ k.transpose(-2, -1) for k in keys]
        scores[2] = scores[2] * self.gate_fn(self.gating_factor)
        values = [_heads(self.v_proj(t), n) for t in (x, h_adapter, h_task)]
        return self._attend(scores, values, x)


class VLAAdapterProBlock(_Block):
    """VLA-Adapter-Pro: self-attention with its own projections, RoPE, and the unused ``film_gen``."""

    def __init__(self, width: int, config: ActionExpertConfig) -> None:
        super().__init__(width, config)
        self.q_proj = nn.Linear(width, width)
        self.k_self = nn.Linear(width, width)
        self.v_self = nn.Linear(width, width)
        self.k_adapter = nn.Linear(width, width)
        self.v_adapter = nn.Linear(width, width)
        self.k_task = nn.Linear(width, width)
        self.v_task = nn.Linear(width, width)
        # Upstream: "FiLM is useless; to avoid conflict with chkpt, it can be kept as is for now."
        self.film_gen = nn.Sequential(nn.Linear(width, 2 * width))

    def forward(self, x: Tensor, h_adapter: Tensor, h_task: Tensor) -> Tensor:
        """One block; key order ``[self, h_a; p, h_t]`` as upstream."""
        n = self.num_heads
        q = self._rope(_heads(self.q_proj(x), n))
        keys = [
            self._rope(_heads(proj(t), n))
            for proj, t in ((self.k_self, x), (self.k_adapter, h_adapter), (self.k_task, h_task))
        ]
        scores = [q @ k.transpose(-2, -1) for k in keys]
        scores[2] = scores[2] * self.gate_fn(self.gating_factor)
        values = [
            _heads(proj(t), n)
            for proj, t in ((self.v_self, x), (self.v_adapter, h_adapter), (self.v_task, h_task))
        ]
        return self._attend(scores, values, x)


BLOCKS: dict[str, type[_Block]] = {
    "mergevla": MergeVLABlock,
    "vla_adapter": VLAAdapterBlock,
    "vla_adapter_pro": VLAAdapterProBlock,
}


class ProprioProjector(nn.Module):
    """``fc1 -> GELU -> fc2``: the normalised proprio vector to one head token (upstream's names)."""

    def __init__(self, proprio_dim: int, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(proprio_dim, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, proprio: Tensor) -> Tensor:
        """``(batch, proprio_dim)`` -> ``(batch, 1, width)``."""
        return self.fc2(F.gelu(self.fc1(proprio))).unsqueeze(1)


class ActionExpert(nn.Module):
    """The head: ``layer_norm1, fc1``, a block per LLM layer, ``layer_norm2, fc2`` (upstream MLPResNet)."""

    def __init__(
        self, width: int, num_blocks: int, chunk_size: int, action_dim: int, config: ActionExpertConfig
    ) -> None:
        super().__init__()
        self.chunk_size, self.action_dim, self.width = chunk_size, action_dim, width
        self.noise_std = config.train_input_noise_std
        self.layer_norm1 = nn.LayerNorm(action_dim * width)
        self.fc1 = nn.Linear(action_dim * width, width)
        self.blocks = nn.ModuleList(BLOCKS[config.variant](width, config) for _ in range(num_blocks))
        self.layer_norm2 = nn.LayerNorm(width)
        self.fc2 = nn.Linear(width, action_dim)

    def forward(
        self,
        task_states: Tensor,
        action_states: Tensor,
        proprio_token: Tensor,
        input_noise: Tensor | None = None,
    ) -> Tensor:
        """Normalised action chunk.

        Args:
            task_states: ``(batch, blocks, task tokens, width)``; entry i is LLM hidden state i + 1 at the
                patch positions.
            action_states: ``(batch, blocks, queries, width)``; LLM hidden state i + 1 at the query positions.
            proprio_token: ``(batch, 1, width)`` from the proprio projector.
            input_noise: Optional ``(batch, chunk, action_dim * width)`` added to the zero input (training).

        Returns:
            ``(batch, chunk, action_dim)``.
        """
        batch = task_states.shape[0]
        x = task_states.new_zeros(batch, self.chunk_size, self.action_dim * self.width)
        if input_noise is not None:
            x = x + input_noise
        x = F.relu(self.fc1(self.layer_norm1(x)))  # (batch, chunk, width)
        for index, block in enumerate(self.blocks):
            h_adapter = torch.cat([action_states[:, index], proprio_token], dim=1)
            x = block(x, h_adapter, task_states[:, index])
        return self.fc2(self.layer_norm2(x))
