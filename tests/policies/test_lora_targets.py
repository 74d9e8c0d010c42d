"""LoRA targets: ``forward-linear`` adapts exactly the VLM layers whose output reaches the action."""

from __future__ import annotations

import pytest
import torch

from vlamergebench.policies.lora import add_lora, lora_targets
from vlamergebench.policies.model import PromptBatch, build_model
from vlamergebench.policies.registry import make_config


def _lora_b_gradients(targets: str) -> dict[str, float]:
    config = make_config("tiny", {"lora": {"targets": targets}})
    model = build_model(config, 0)
    add_lora(model, config.lora, seed=0)
    torch.manual_seed(0)
    images = torch.rand(2, config.num_images, 3, 84, 84)
    proprio = torch.rand(2, config.proprio_dim) * 2 - 1
    prompts = PromptBatch.from_lists([[5, 6, 7], [8, 9]], pad_id=0)
    model(images, proprio, prompts).abs().mean().backward()
    return {
        name: float(param.grad.abs().sum()) if param.grad is not None else 0.0
        for name, param in model.named_parameters()
        if "lora_B" in name
    }


def test_every_forward_linear_target_receives_a_gradient():
    gradients = _lora_b_gradients("forward-linear")
    assert gradients and all(value > 0 for value in gradients.values()), [
        name for name, value in gradients.items() if value == 0
    ]


def test_all_linear_also_adapts_layers_off_the_forward_path():
    gradients = _lora_b_gradients("all-linear")
    dead = sorted(name for name, value in gradients.items() if value == 0)
    assert dead and all(".blocks.2." in name or ".attn_pool." in name for name in dead), dead


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_forward_linear_drops_only_the_unused_tower_layers(preset):
    config = make_config(preset, {"lora": {"targets": "all-linear"}})
    model = build_model(config, 0)
    everything = lora_targets(model, config.lora)
    forward = lora_targets(model, make_config(preset, {"lora": {"targets": "forward-linear"}}).lora)
    last = config.vision.featurizer.depth - 1
    dropped = sorted(set(everything) - set(forward))
    assert dropped and all(f".blocks.{last}." in name or ".attn_pool." in name for name in dropped)
    assert set(forward) < set(everything)
