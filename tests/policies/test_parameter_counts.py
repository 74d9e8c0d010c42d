"""The reference preset reproduces the research notes' parameter table to the unit (on the meta device)."""

from __future__ import annotations

import pytest
import torch

from vlamergebench.policies.action_expert import ActionExpert
from vlamergebench.policies.config import ActionExpertConfig
from vlamergebench.policies.lora import add_lora
from vlamergebench.policies.model import VLA
from vlamergebench.policies.registry import make_config

# the published VLA-Adapter / MergeVLA configurations (docs/policy.md).
REFERENCE_COUNTS = {
    "vision.featurizer.": 303_230_976,  # DINOv2 ViT-L/14-reg4 @224
    "vision.fused_featurizer.": 427_680_704,  # SigLIP so400m/14 @224 with its MAP head
    "projector.": 27_552_000,
    "llm.": 494_032_768,  # Qwen2.5-0.5B, tied embeddings
    "action_queries.": 57_344,
    "proprio_projector.": 811_776,
    "action_head.": 159_996_959,  # MergeVLA head
}
LORA_COUNTS = {
    "vision.featurizer.": 25_165_824,
    "vision.fused_featurizer.": 32_014_336,
    "projector.": 1_425_408,
    "llm.": 35_192_832,
}


def _count(model: torch.nn.Module, prefix: str, lora: bool) -> int:
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if name.startswith(prefix) and ("lora_" in name) == lora
    )


@pytest.fixture(scope="module")
def reference_on_meta():
    with torch.device("meta"):
        model = VLA(make_config("reference"))
        add_lora(model, model.config.lora, seed=0)
    return model


def test_reference_components_match_the_table(reference_on_meta):
    counts = {prefix: _count(reference_on_meta, prefix, lora=False) for prefix in REFERENCE_COUNTS}
    assert counts == REFERENCE_COUNTS
    assert _count(reference_on_meta, "", lora=False) == 1_413_362_527  # the whole MergeVLA policy


def test_reference_lora_all_linear_matches_peft_count(reference_on_meta):
    counts = {prefix: _count(reference_on_meta, prefix, lora=True) for prefix in LORA_COUNTS}
    assert counts == LORA_COUNTS
    assert _count(reference_on_meta, "", lora=True) == 93_798_400
    # LoRA never touches the fully trained parts.
    assert _count(reference_on_meta, "action_head.", lora=True) == 0


def test_head_block_and_expert_head_sizes(reference_on_meta):
    block = reference_on_meta.action_head.blocks[23]
    assert sum(p.numel() for p in block.parameters()) == 6_431_489
    tail = [reference_on_meta.action_head.layer_norm2, reference_on_meta.action_head.fc2]
    # MergeVLA's per-expert head at depth 1: the last block plus the output LN and Linear.
    assert sum(p.numel() for m in [block, *tail] for p in m.parameters()) == 6_439_560


@pytest.mark.parametrize(
    ("variant", "gate", "expected"),
    [("vla_adapter", "tanh", 102_129_695), ("vla_adapter_pro", "tanh", 217_864_223)],
)
def test_upstream_head_variants_match_the_table(variant, gate, expected):
    with torch.device("meta"):
        head = ActionExpert(896, 24, 8, 7, ActionExpertConfig(variant=variant, gate=gate))
    assert sum(p.numel() for p in head.parameters()) == expected
