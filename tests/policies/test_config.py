"""VLAConfig: presets, JSON round trip, rejection of unknown keys and inconsistent fields."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vlamergebench.configs import ConfigError
from vlamergebench.policies.config import ViTConfig, VLAConfig
from vlamergebench.policies.registry import PRESETS, make_config


@pytest.mark.parametrize("name", PRESETS.names())
def test_preset_round_trips_through_json(name):
    config = make_config(name)
    data = json.loads(json.dumps(config.to_dict()))
    assert VLAConfig.from_dict(data) == config
    assert VLAConfig.from_dict(data).config_hash() == config.config_hash()
    # Defaults are written out, not dropped.
    assert (
        data["action_expert"]["expert_head_depth"] == 1 and "train_input_noise_std" in data["action_expert"]
    )


@pytest.mark.parametrize("name", PRESETS.names())
def test_preset_invariants(name):
    config = make_config(name)
    assert config.num_head_blocks == config.llm.num_layers
    assert (
        config.num_task_tokens == 2 * (config.vision.image_size // config.vision.featurizer.patch_size) ** 2
    )
    assert config.action_expert.variant == "mergevla" and config.action_expert.gate == "sigmoid"


def test_reference_preset_is_the_published_one():
    config = make_config("reference")
    assert (config.vision.image_size, config.num_task_tokens, config.num_action_queries) == (224, 512, 64)
    assert (config.llm.hidden_size, config.llm.num_layers, config.llm.vocab_size) == (896, 24, 151936)
    assert (config.lora.rank, config.lora.alpha, config.lora.targets) == (64, 128.0, "all-linear")
    assert (config.chunk_size, config.action_dim, config.proprio_dim) == (8, 7, 8)


def test_unknown_and_missing_keys_raise_naming_them():
    data = make_config("tiny").to_dict()
    data["llm"]["hiden_size"] = 3
    with pytest.raises(ConfigError, match="hiden_size"):
        VLAConfig.from_dict(data)
    data = make_config("tiny").to_dict()
    del data["vision"]["featurizer"]["width"]
    with pytest.raises(ConfigError, match=r"vision\.featurizer.*width"):
        VLAConfig.from_dict(data)


def test_inconsistent_fields_raise_with_both_values():
    with pytest.raises(ConfigError, match="100.*6"):
        ViTConfig(width=100, depth=3, num_heads=6, mlp_dim=4, patch_size=2)
    data = make_config("tiny").to_dict()
    data["vision"]["fused_featurizer"]["patch_size"] = 12
    with pytest.raises(ConfigError, match="featurizer 14, fused_featurizer 12"):
        VLAConfig.from_dict(data)
    data["vision"]["fused_featurizer"]["patch_size"] = 16
    with pytest.raises(ConfigError, match="image_size 84 is not a multiple of fused_featurizer.patch_size"):
        VLAConfig.from_dict(data)
    data = make_config("tiny").to_dict()
    data["action_expert"]["variant"] = "film"
    with pytest.raises(ConfigError, match="film"):
        VLAConfig.from_dict(data)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError, match="reference, small, tiny"):
        make_config("huge")


def test_config_module_imports_no_torch():
    code = (
        "import sys, vlamergebench.policies.registry as r\n"
        "r.make_config('tiny')\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_preset_overrides_make_a_base_for_another_embodiment():
    aloha = make_config("tiny", {"action_dim": 14, "proprio_dim": 14, "llm": {"num_layers": 2}})
    tiny = make_config("tiny")
    assert (aloha.action_dim, aloha.proprio_dim, aloha.llm.num_layers) == (14, 14, 2)
    assert aloha.llm.hidden_size == tiny.llm.hidden_size and aloha.vision == tiny.vision  # the rest kept
    with pytest.raises(ConfigError, match=r"--policy-config on 'tiny'.llm: unknown field\(s\) \['layers'\]"):
        make_config("tiny", {"llm": {"layers": 2}})
