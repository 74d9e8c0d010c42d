"""The fused two-tower vision backbone of Prismatic ``dinosiglip`` (VLA-Adapter's VLM), without timm.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``, ``reg_token``,
``pos_embed``, ``blocks.N.{norm1, attn.qkv, attn.proj, ls1, norm2, mlp.fc1, mlp.fc2, ls2}``, ``norm``,
``attn_pool.*``), with LayerScale's ``gamma`` stored as ``scale_factor`` as in VLA-Adapter's HF checkpoints,
so released weights load by renaming prefixes only. timm itself is not a dependency: PyPI's timm needs
torchvision, which does not load next to the CPU torch used here.

Features are the output of the second-to-last block, with the prefix (CLS, register) tokens stripped and no
final norm: upstream monkey-patches ``forward`` to ``get_intermediate_layers(n={depth - 2})``. The last block,
the final norm and SigLIP's attention-pool head are therefore stored (and adapted by LoRA) but never computed.
Position embeddings cover the patches only (timm's ``no_embed_class``), true of both reference towers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the usual alias)
from torch import Tensor, nn

from vlamergebench.policies.config import VisionConfig, ViTConfig

# LayerScale initial value. DINOv2 uses 1e-5, but our towers train from scratch (tiny) or load released
# weights (reference), and 1e-5 makes a from-scratch tower nearly inert for its first hundreds of steps.
LAYER_SCALE_INIT = 0.1


class LayerScale(nn.Module):
    """Per-channel scale; the parameter is ``scale_factor`` (timm's ``gamma``, renamed as upstream)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale_factor = nn.Parameter(torch.full((width,), LAYER_SCALE_INIT))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * self.scale_factor


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2`` (timm ``Mlp``)."""

    def __init__(self, width: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.approximate = "tanh" if activation == "gelu_tanh" else "none"

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm ``Attention``)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        batch, tokens, width = x.shape
        qkv = (
            self.qkv(x)
            .reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (batch, heads, tokens, head_dim)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Block(nn.Module):
    """Pre-norm transformer block, with LayerScale where the tower has it."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.attn = Attention(config.width, config.num_heads)
        self.ls1 = LayerScale(config.width) if config.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.mlp = Mlp(config.width, config.mlp_dim, config.activation)
        self.ls2 = LayerScale(config.width) if config.layer_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class AttentionPoolLatent(nn.Module):
    """SigLIP's MAP head (timm ``AttentionPoolLatent``): kept for weight parity, never run by the policy."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.latent = nn.Parameter(torch.zeros(1, 1, config.width))
        self.q = nn.Linear(config.width, config.width)
        self.kv = nn.Linear(config.width, 2 * config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.mlp = Mlp(config.width, config.mlp_dim, config.activation)


class ViT(nn.Module):
    """A ViT tower returning the patch features of its second-to-last block."""

    def __init__(self, config: ViTConfig, image_size: int) -> None:
        super().__init__()
        self.config = config
        grid = image_size // config.patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(
            3, config.width, kernel_size=config.patch_size, stride=config.patch_size
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.width)) if config.class_token else None
        self.reg_token = (
            nn.Parameter(torch.zeros(1, config.num_registers, config.width)) if config.num_registers else None
        )
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, config.width) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.width, eps=config.norm_eps)
        self.attn_pool = AttentionPoolLatent(config) if config.attention_pool else None
        self.num_prefix_tokens = int(config.class_token) + config.num_registers
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        """Patch features of block ``depth - 2``.

        Args:
            images: ``(batch, 3, H, W)`` in [0, 1]; normalised here with the tower's mean and std.

        Returns:
            ``(batch, patches, width)``.
        """
        x = self.patch_embed.proj((images - self.mean) / self.std).flatten(2).transpose(1, 2)
        x = x + self.pos_embed
        prefix = [
            token.expand(x.shape[0], -1, -1)
            for token in (self.cls_token, self.reg_token)
            if token is not None
        ]
        x = torch.cat([*prefix, x], dim=1)
        for block in self.blocks[: self.config.depth - 1]:  # the last block's output is never read
            x = block(x)
        return x[:, self.num_prefix_tokens :]


class VisionBackbone(nn.Module):
    """Both towers on every image; per patch ``[featurizer ; fused_featurizer]``, images along patches."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.featurizer = ViT(config.featurizer, config.image_size)
        self.fused_featurizer = ViT(config.fused_featurizer, config.image_size)

    def forward(self, images: Tensor) -> Tensor:
        """Fused patch features.

        Args:
            images: ``(batch, num_images, 3, H, W)`` in [0, 1].

        Returns:
            ``(batch, num_images * patches, featurizer.width + fused_featurizer.width)``, image 0's patches
            first, as upstream's concatenation along the patch axis.
        """
        batch, num_images = images.shape[:2]
        flat = images.flatten(0, 1)  # (batch * num_images, 3, H, W)
        fused = torch.cat([self.featurizer(flat), self.fused_featurizer(flat)], dim=-1)
        return fused.reshape(batch, num_images * fused.shape[1], fused.shape[2])


class Projector(nn.Module):
    """``fc1 -> GELU -> fc2 -> GELU -> fc3`` (Prismatic ``fused-gelu-mlp``), fused features to LLM width."""

    def __init__(self, feature_dim: int, llm_dim: int, expansion: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(feature_dim, expansion * feature_dim)
        self.fc2 = nn.Linear(expansion * feature_dim, llm_dim)
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, features: Tensor) -> Tensor:  # noqa: D102
        return self.fc3(F.gelu(self.fc2(F.gelu(self.fc1(features)))))
