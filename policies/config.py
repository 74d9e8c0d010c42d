"""Configuration of the canonical policy, the MergeVLA reference VLA (VLA-Adapter base), with named presets.

The reference preset reproduces the published sizes (MergeVLA, arXiv 2511.18810, on VLA-Adapter, arXiv
2509.09372): DINOv2 ViT-L/14-reg4 + SigLIP so400m/14 at 224 px, a 3-layer GELU projector, Qwen2.5-0.5B, 64
action queries and one action-expert block per LLM layer. ``tiny`` is the same code with small widths, depths
and images, sized so that an expert trains on 2 CPU cores in minutes (``docs/policy.md`` gives the numbers).

Building a config has no side effects and imports no torch, so the CLI and the leaderboards can read configs
cheaply. Every dataclass is frozen; ``from_dict`` rejects unknown keys so that a typo never silently becomes a
default, and ``to_dict`` writes every field (defaults included) because defaults move between versions.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vlamergebench.configs import ConfigError, from_mapping
from vlamergebench.provenance import config_hash

HEAD_VARIANTS = ("mergevla", "vla_adapter", "vla_adapter_pro")
GATES = ("sigmoid", "tanh")
ACTIVATIONS = ("gelu", "gelu_tanh")
TOKENIZERS = ("hashed_words", "qwen")
LORA_TARGET_SETS = ("all-linear", "forward-linear")

# DINOv2 and SigLIP normalisation, as VLA-Adapter's preprocessor_config.json.
DINO_MEAN = (0.484375, 0.455078, 0.40625)
DINO_STD = (0.2285, 0.2236, 0.2246)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

# VLA-Adapter's inference prompt with ``use_minivlm=True`` (experiments/robot/openvla_utils.py).
QWEN_PROMPT = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWhat action should the robot take to {instruction}?<|im_end|>\n<|im_start|>assistant\n"
)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


@dataclass(frozen=True)
class ViTConfig:
    """One vision tower: a plain ViT with timm parameter names (no timm dependency).

    Attributes:
        width: Embedding width (DINOv2-L 1024, SigLIP so400m 1152).
        depth: Number of blocks; the features are the output of block ``depth - 2`` (second to last), without
            the final norm, as VLA-Adapter's ``get_intermediate_layers(n={depth - 2})``.
        num_heads: Attention heads.
        mlp_dim: Hidden width of the block MLP.
        patch_size: Square patch side in pixels.
        num_registers: Register tokens (DINOv2-reg: 4), stripped from the features.
        class_token: Whether a CLS token is prepended (stripped from the features).
        layer_scale: LayerScale after attention and MLP (DINOv2), stored as ``ls{1,2}.scale_factor``.
        attention_pool: SigLIP's MAP head ``attn_pool.*``; stored (and LoRA-adapted) but never computed.
        activation: ``gelu`` (DINOv2) or ``gelu_tanh`` (SigLIP).
        norm_eps: LayerNorm epsilon.
        mean: Per-channel normalisation mean of the tower's input.
        std: Per-channel normalisation std of the tower's input.
    """

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    num_registers: int = 0
    class_token: bool = False
    layer_scale: bool = False
    attention_pool: bool = False
    activation: str = "gelu"
    norm_eps: float = 1e-6
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ConfigError(f"vit: width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.depth < 2:
            raise ConfigError(f"vit: depth must be >= 2 (features come from block depth-2), got {self.depth}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"vit: activation must be one of {ACTIVATIONS}, got {self.activation!r}")


@dataclass(frozen=True)
class VisionConfig:
    """The fused two-tower vision backbone (Prismatic ``dinosiglip``), applied to each of the images.

    Attributes:
        featurizer: The DINOv2-style tower (``vision.featurizer.*``); its features come first.
        fused_featurizer: The SigLIP-style tower (``vision.fused_featurizer.*``).
        image_size: Square input side in pixels (both towers).
        center_crop_fraction: Area fraction of the centre crop applied before resizing at inference; training
            takes random crops of the same area (VLA-Adapter: 0.9).
    """

    featurizer: ViTConfig
    fused_featurizer: ViTConfig
    image_size: int
    center_crop_fraction: float = 0.9

    def __post_init__(self) -> None:
        for name, tower in (("featurizer", self.featurizer), ("fused_featurizer", self.fused_featurizer)):
            if self.image_size % tower.patch_size:
                raise ConfigError(
                    f"vision: image_size {self.image_size} is not a multiple of "
                    f"{name}.patch_size {tower.patch_size}"
                )
        if self.featurizer.patch_size != self.fused_featurizer.patch_size:
            raise ConfigError(
                "vision: the towers are fused per patch, so patch sizes must match "
                f"(featurizer {self.featurizer.patch_size}, "
                f"fused_featurizer {self.fused_featurizer.patch_size})"
            )
        if not 0.0 < self.center_crop_fraction <= 1.0:
            raise ConfigError(
                f"vision: center_crop_fraction must be in (0, 1], got {self.center_crop_fraction}"
            )

    @property
    def patches_per_image(self) -> int:
        """Patch tokens one image contributes (16 x 16 = 256 at reference size)."""
        return (self.image_size // self.featurizer.patch_size) ** 2

    @property
    def feature_dim(self) -> int:
        """Width of a fused patch feature (1024 + 1152 = 2176 at reference size)."""
        return self.featurizer.width + self.fused_featurizer.width

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "vision") -> VisionConfig:
        """Parse the JSON form; an unknown or missing key raises naming it."""
        return from_mapping(cls, data, where)


@dataclass(frozen=True)
class LLMConfig:
    """The Qwen2 section: the fields of a ``transformers.Qwen2Config`` that the policy sets.

    Attributes:
        hidden_size: Model width (Qwen2.5-0.5B: 896).
        num_layers: Decoder layers; the action expert has exactly one block per layer.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (grouped-query attention).
        intermediate_size: SwiGLU MLP width.
        vocab_size: Embedding rows.
        rope_theta: RoPE base.
        rms_norm_eps: RMSNorm epsilon.
        max_position_embeddings: Longest sequence.
        tokenizer: ``hashed_words`` (offline, built from code) or ``qwen`` (loaded from a local directory).
        prompt_template: The prompt around ``{instruction}`` (lower-cased, as upstream).
        stop_token_id: The id appended after the action queries (Qwen id 2 is ``#``, a Llama "stop" left-over
            kept for weight compatibility).
    """

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tokenizer: str = "qwen"
    prompt_template: str = QWEN_PROMPT
    stop_token_id: int = 2

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"llm: hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"llm: num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}"
            )
        if self.tokenizer not in TOKENIZERS:
            raise ConfigError(f"llm: tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        if "{instruction}" not in self.prompt_template:
            raise ConfigError("llm: prompt_template must contain '{instruction}'")


@dataclass(frozen=True)
class ActionExpertConfig:
    """The action expert (policy head) that reads every LLM layer.

    Attributes:
        variant: ``mergevla`` (cross-attention only, two query projections, RoPE), ``vla_adapter`` (the
            original block: self-attention over the chunk tokens, shared projections, no RoPE) or
            ``vla_adapter_pro`` (self-attention with separate projections, RoPE, unused FiLM weights).
        gate: Scaling of the raw-feature (task) logits: ``sigmoid`` (MergeVLA) or ``tanh`` (VLA-Adapter).
        num_heads: Attention heads of each block (8 upstream).
        rope_base: RoPE base of the head (10000 upstream).
        train_input_noise_std: Std of the Gaussian noise added to the head's zero input in training (0.02).
        expert_head_depth: How many of the last blocks a MergeVLA merge keeps per expert (1 for LIBERO);
            read by the merge methods, not by the model.
    """

    variant: str = "mergevla"
    gate: str = "sigmoid"
    num_heads: int = 8
    rope_base: float = 10000.0
    train_input_noise_std: float = 0.02
    expert_head_depth: int = 1

    def __post_init__(self) -> None:
        if self.variant not in HEAD_VARIANTS:
            raise ConfigError(f"action_expert: variant must be one of {HEAD_VARIANTS}, got {self.variant!r}")
        if self.gate not in GATES:
            raise ConfigError(f"action_expert: gate must be one of {GATES}, got {self.gate!r}")
        if self.expert_head_depth < 0:
            raise ConfigError(f"action_expert: expert_head_depth must be >= 0, got {self.expert_head_depth}")


@dataclass(frozen=True)
class LoRASettings:
    """LoRA of an expert (PEFT ``LoraConfig``), applied to the VLM only.

    The action expert, queries and proprio projector are trained fully.

    Attributes:
        rank: LoRA rank r.
        alpha: LoRA alpha; the update is ``(alpha / rank) * B @ A``.
        targets: ``all-linear`` (every ``nn.Linear`` of the vision towers, projector and LLM, as PEFT's
            ``all-linear`` on upstream's VLM), ``forward-linear`` (the same without the layers whose output
            never reaches the action: each tower's blocks after the feature block and SigLIP's attention
            pool, which would be stored and counted but never receive a gradient) or a tuple of module-name
            suffixes.
    """

    rank: int = 64
    alpha: float = 128.0
    targets: str | tuple[str, ...] = "all-linear"

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora: rank must be >= 1, got {self.rank}")
        if isinstance(self.targets, str) and self.targets not in LORA_TARGET_SETS:
            raise ConfigError(
                f"lora: targets must be one of {LORA_TARGET_SETS} or a list of module names, "
                f"got {self.targets!r}"
            )

    @property
    def scale(self) -> float:
        """``alpha / rank``, PEFT's scaling of ``B @ A``."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class VLAConfig:
    """The whole canonical policy.

    Attributes:
        name: Preset name this config derives from (informational).
        vision: Vision towers and image size.
        llm: The Qwen2 section.
        action_expert: The head.
        lora: LoRA used when training experts.
        projector_expansion: fc1 width of the projector as a multiple of the fused feature width (4).
        num_action_queries: Learned query embeddings appended after the prompt (64 upstream).
        chunk_size: Actions per prediction (8 for LIBERO).
        action_dim: Action dimensions (7 for LIBERO).
        proprio_dim: Proprio dimensions (8 for LIBERO).
        image_keys: Observation keys of the images, in order (third person first, then wrist).
        proprio_key: Observation key of the proprio vector.
        instruction_key: Observation key of the language instruction.
        binarize_gripper: Whether the last action dimension is a gripper command binarised at inference
            (LIBERO: upstream's ``normalize_gripper_action(binarize=True)``).
        gripper_open_is_one: Whether the head predicts the gripper as 1 = open / 0 = close (released
            VLA-Adapter checkpoints, whose outputs are binarised and negated) instead of the env's -1 open /
            +1 close (our experts, trained on env actions).
    """

    name: str
    vision: VisionConfig
    llm: LLMConfig
    action_expert: ActionExpertConfig = field(default_factory=ActionExpertConfig)
    lora: LoRASettings = field(default_factory=LoRASettings)
    projector_expansion: int = 4
    num_action_queries: int = 64
    chunk_size: int = 8
    action_dim: int = 7
    proprio_dim: int = 8
    image_keys: tuple[str, ...] = ("agentview_image", "wrist_image")
    proprio_key: str = "state"
    instruction_key: str = "instruction"
    binarize_gripper: bool = True
    gripper_open_is_one: bool = False

    def __post_init__(self) -> None:
        if not self.image_keys:
            raise ConfigError("policy: image_keys is empty")
        if self.llm.hidden_size % self.action_expert.num_heads:
            raise ConfigError(
                f"policy: llm.hidden_size {self.llm.hidden_size} (the head width) is not divisible by "
                f"action_expert.num_heads {self.action_expert.num_heads}"
            )
        if (self.llm.hidden_size // self.action_expert.num_heads) % 2:
            raise ConfigError("policy: the head's head_dim must be even for RoPE")
        if self.action_expert.expert_head_depth > self.llm.num_layers:
            raise ConfigError(
                f"policy: action_expert.expert_head_depth {self.action_expert.expert_head_depth} exceeds the "
                f"number of head blocks (= llm.num_layers {self.llm.num_layers})"
            )

    @property
    def num_images(self) -> int:
        """Images per observation."""
        return len(self.image_keys)

    @property
    def num_task_tokens(self) -> int:
        """Raw-feature (patch) tokens the head attends to: images x patches per image (512 upstream)."""
        return self.num_images * self.vision.patches_per_image

    @property
    def num_head_blocks(self) -> int:
        """Head blocks; block i reads LLM hidden state i + 1 (the invariant blocks = LLM layers)."""
        return self.llm.num_layers

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with every field written out."""
        return _plain(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def config_hash(self) -> str:
        """The config's :func:`~vlamergebench.provenance.config_hash`."""
        return config_hash(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "policy") -> VLAConfig:
        """Parse the JSON form; an unknown or missing key raises naming it."""
        return from_mapping(cls, data, where)

    def replace(self, **changes: Any) -> VLAConfig:
        """A copy with top-level fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


# What sets a tower family apart besides its size: DINOv2 (registers, class token, layer scale) and SigLIP
# (attention pooling, tanh-approximated GELU), both with 14 px patches.
TOWER_FAMILIES: dict[str, dict[str, Any]] = {
    "dinov2": {
        "num_registers": 4,
        "class_token": True,
        "layer_scale": True,
        "activation": "gelu",
        "mean": DINO_MEAN,
        "std": DINO_STD,
    },
    "siglip": {"attention_pool": True, "activation": "gelu_tanh", "mean": SIGLIP_MEAN, "std": SIGLIP_STD},
}


def vit_tower(family: str, width: int, depth: int, num_heads: int, mlp_dim: int) -> ViTConfig:
    """A tower of ``family`` ("dinov2" or "siglip") at the given size."""
    return ViTConfig(
        width=width,
        depth=depth,
        num_heads=num_heads,
        mlp_dim=mlp_dim,
        patch_size=14,
        **TOWER_FAMILIES[family],
    )


def reference_config() -> VLAConfig:
    """The published MergeVLA policy: 1,413,362,527 parameters (research notes section 3)."""
    return VLAConfig(
        name="reference",
        vision=VisionConfig(
            # timm vit_large_patch14_reg4_dinov2.lvd142m at img_size=224.
            featurizer=vit_tower("dinov2", width=1024, depth=24, num_heads=16, mlp_dim=4096),
            # timm vit_so400m_patch14_siglip_224.
            fused_featurizer=vit_tower("siglip", width=1152, depth=27, num_heads=16, mlp_dim=4304),
            image_size=224,
        ),
        # Qwen2.5-0.5B.
        llm=LLMConfig(
            hidden_size=896,
            num_layers=24,
            num_heads=14,
            num_kv_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            tokenizer="qwen",
        ),
        action_expert=ActionExpertConfig(variant="mergevla", gate="sigmoid", expert_head_depth=1),
        lora=LoRASettings(rank=64, alpha=128.0, targets="all-linear"),
    )


def tiny_config() -> VLAConfig:
    """The same architecture at CPU scale (about 2.3 M parameters; sizes chosen in ``docs/policy.md``).

    Deviations from the reference, all in sizes only: 84 px images with 14 px patches (6 x 6 patches, so 72
    task tokens for two images), 3-block towers of width 64 (blocks 0-1 used), a 4-layer Qwen2 of width 128
    with a hashed word-level vocabulary of 2048 ids and a short prompt, 16 action queries instead of 64, and
    LoRA rank 8 (alpha 16, keeping alpha = 2r).
    """
    return VLAConfig(
        name="tiny",
        vision=VisionConfig(
            featurizer=vit_tower("dinov2", width=64, depth=3, num_heads=4, mlp_dim=256),
            fused_featurizer=vit_tower("siglip", width=64, depth=3, num_heads=4, mlp_dim=256),
            image_size=84,
        ),
        llm=LLMConfig(
            hidden_size=128,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            intermediate_size=384,
            vocab_size=2048,
            rope_theta=10000.0,
            max_position_embeddings=1024,
            tokenizer="hashed_words",
            prompt_template="what action should the robot take to {instruction}?",
            stop_token_id=2,
        ),
        action_expert=ActionExpertConfig(variant="mergevla", gate="sigmoid", expert_head_depth=1),
        lora=LoRASettings(rank=8, alpha=16.0, targets="all-linear"),
        num_action_queries=16,
    )


def small_config() -> VLAConfig:
    """A deeper CPU-scale policy for the default expert set (about 4.4 M parameters).

    Sized so that MergeVLA's mechanisms have room to act while a base still trains on 2 CPU cores in about
    an hour and the shipped set (base + four experts) stays near 40 MB: 8 LLM layers and so 8 action-expert
    blocks (a one-block per-expert head is an eighth of the head; one of 24 upstream), width 128 as ``tiny``
    (wider heads would push each expert's fully stored action expert past the size budget), 4-block towers
    of width 96 (blocks 0-2 used) at 84 px, 16 action queries, and LoRA rank 8 (alpha 16, alpha = 2r; r /
    width is 6%, upstream's 64 / 896 is 7%) on the layers on the forward path only.
    """
    tiny = tiny_config()
    tower = {"width": 96, "depth": 4, "mlp_dim": 384}
    return dataclasses.replace(
        tiny,
        name="small",
        vision=dataclasses.replace(
            tiny.vision,
            featurizer=dataclasses.replace(tiny.vision.featurizer, **tower),
            fused_featurizer=dataclasses.replace(tiny.vision.fused_featurizer, **tower),
        ),
        llm=dataclasses.replace(tiny.llm, num_layers=8),
        lora=LoRASettings(rank=8, alpha=16.0, targets="forward-linear"),
    )
