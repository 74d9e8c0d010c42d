"""Every registered merge method meets ``check_method`` (registering a method is what gets it tested)."""

from __future__ import annotations

import pytest
import torch

from vlamergebench.merge_methods.check import check_method
from vlamergebench.merge_methods.registry import METHODS, ROUTERS

torch.set_num_threads(1)


@pytest.mark.parametrize("name", METHODS.names())
def test_check_method_float32(name, hand_set, tmp_path):
    merged = check_method(name, hand_set, tmp_path)
    assert merged.skills == hand_set.skills
    assert merged.expert_set_id == hand_set.id


@pytest.mark.parametrize("name", ["ta", "ties", "mergevla", "carve", "lora_bank"])
def test_check_method_bfloat16(name, bf16_set, tmp_path):
    check_method(name, bf16_set, tmp_path)


def test_registry_metadata_is_complete():
    for spec in METHODS:
        for key in ("paper", "arxiv", "needs_task_identity", "router", "kind", "stores"):
            assert key in spec.metadata, (spec.name, key)
        assert spec.metadata["kind"] in ("one_shot", "continual")
        assert spec.metadata["router"] is None or spec.metadata["router"] in ROUTERS


@pytest.mark.parametrize("name", METHODS.names())
def test_check_method_on_real_tiny_experts(name, tiny_set, tmp_path):
    """The same contract on real tiny-preset checkpoints, and every skill loads into the real policy."""
    from vlamergebench.policies.config import VLAConfig
    from vlamergebench.policies.model import VLAPolicy

    merged = check_method(name, tiny_set, tmp_path)
    weights = merged.instantiate(tiny_set.skills[-1])
    policy = VLAPolicy.from_state_dict(VLAConfig.from_dict(weights.policy_config), weights.tensors,
                                       weights.norm_stats)  # fmt: skip
    assert policy.config.name == "tiny"
