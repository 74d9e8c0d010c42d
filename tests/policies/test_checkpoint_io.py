"""Model <-> checkpoint: bit-exact round trips, LoRA folding, clear errors, the released upstream layouts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vlamergebench.policies import checkpoint as ckpt
from vlamergebench.policies.checkpoint import CheckpointError, NormStats
from vlamergebench.policies.io import (
    expert_state_dict,
    load_model,
    read_prismatic_vlm,
    read_released_vla,
    save_base,
    save_expert,
)
from vlamergebench.policies.lora import add_lora, base_namespace, lora_factors
from vlamergebench.policies.model import build_model
from vlamergebench.policies.policy import VLAPolicy
from vlamergebench.policies.registry import make_config
from vlamergebench.policies.tokenizer import HashedWordTokenizer

STATS = NormStats((-0.5,) * 6 + (-1.0,), (0.5,) * 6 + (1.0,), (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8)
SKILL = {"name": "object_0", "suite": "libero_object", "task": "pick", "task_id": 0, "env_id": None}


def _observations(config, count=2):
    rng = np.random.default_rng(0)
    return [
        {
            "agentview_image": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
            "wrist_image": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
            "state": rng.uniform(-1, 1, 8).astype(np.float32),
            "instruction": "pick up the alphabet soup and place it in the basket",
        }
        for _ in range(count)
    ]


def _normalized(model, observations):
    policy = VLAPolicy(model, STATS, HashedWordTokenizer(model.config.llm.vocab_size))
    with torch.no_grad():
        return policy.model(*policy.prepare(observations))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny base and an expert whose LoRA factors and head differ from the base (non-zero B)."""
    root = tmp_path_factory.mktemp("checkpoints")
    base_model = build_model(make_config("tiny"), seed=0).eval()
    base = save_base(
        base_model, root / "base", norm_stats=STATS, instructions=["a"], provenance={"head_init_seed": 7}
    )
    expert_model, _ = load_model(base.path)
    add_lora(expert_model, expert_model.config.lora, seed=3)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in expert_model.named_parameters():
            if "lora_B" in name or name.startswith("action_head."):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    expert_model.eval()
    expert = save_expert(expert_model, root / "expert", base=base, skill=SKILL, norm_stats=STATS,
                         instructions=["b"], provenance={}, dense=True)  # fmt: skip
    return {
        "root": root,
        "base": base,
        "base_model": base_model,
        "expert": expert,
        "expert_model": expert_model,
    }


def test_base_round_trip_is_bit_exact(saved):
    loaded, checkpoint = load_model(saved["base"].path)
    original = saved["base_model"].state_dict()
    assert set(loaded.state_dict()) == set(original)
    assert all(torch.equal(loaded.state_dict()[k], original[k]) for k in original)
    assert checkpoint.base_id == ckpt.file_sha256(saved["base"].file(ckpt.VLM_FILE))
    assert checkpoint.config["policy"] == make_config("tiny").to_dict()


def test_expert_round_trip_is_bit_exact(saved):
    loaded, checkpoint = load_model(saved["expert"].path, base=saved["base"].path)
    original = saved["expert_model"].state_dict()
    assert all(torch.equal(loaded.state_dict()[k], original[k]) for k in original)
    factors = lora_factors(loaded)
    assert factors and all(torch.equal(factors[k], lora_factors(saved["expert_model"])[k]) for k in factors)
    assert checkpoint.skill == "object_0" and checkpoint.config["lora"]["rank"] == 8
    observations = _observations(loaded.config)
    assert torch.equal(_normalized(loaded, observations), _normalized(saved["expert_model"], observations))


def test_folded_and_unfolded_lora_give_the_same_actions(saved):
    unfolded, _ = load_model(saved["expert"].path, base=saved["base"].path, fold=False)
    folded, _ = load_model(saved["expert"].path, base=saved["base"].path, fold=True)
    assert not any("lora_" in name for name in folded.state_dict())
    observations = _observations(unfolded.config)
    reference = _normalized(unfolded, observations)
    torch.testing.assert_close(_normalized(folded, observations), reference, rtol=1e-5, atol=1e-5)
    # The LoRA matters (otherwise the comparison above proves nothing).
    base_actions = _normalized(saved["base_model"], observations)
    assert (base_actions - reference).abs().max() > 1e-3
    # The tensor-dict path (merged models use it) and dense.safetensors agree with peft's merge.
    tensors = expert_state_dict(saved["expert"].path, saved["base"].path)
    dense = load_file(str(saved["expert"].file(ckpt.DENSE_FILE)))
    folded_state = folded.state_dict()
    for name, tensor in dense.items():
        torch.testing.assert_close(tensor, folded_state[name], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tensors[name], folded_state[name], rtol=1e-6, atol=1e-6)
    policy = VLAPolicy.from_state_dict(make_config("tiny"), tensors, STATS)
    torch.testing.assert_close(_normalized(policy.model, observations), reference, rtol=1e-5, atol=1e-5)


def _copy(saved, tmp_path, which="expert"):
    target = tmp_path / which
    shutil.copytree(saved[which].path, target)
    return target


def test_missing_unexpected_and_misshaped_tensors_are_named(saved, tmp_path):
    expert = _copy(saved, tmp_path)
    path = expert / ckpt.ACTION_EXPERT_FILE
    tensors = load_file(str(path))
    save_file({k: v for k, v in tensors.items() if k != "action_head.fc2.bias"}, str(path))
    with pytest.raises(CheckpointError, match=r"missing .*action_head\.fc2\.bias"):
        load_model(expert, base=saved["base"].path)
    save_file({**tensors, "action_head.extra": torch.zeros(1)}, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected .*action_head\.extra"):
        load_model(expert, base=saved["base"].path)
    save_file({**tensors, "action_head.fc2.weight": torch.zeros(6, 128)}, str(path))
    with pytest.raises(CheckpointError, match=r"action_head\.fc2\.weight has shape \(6, 128\).*\(7, 128\)"):
        load_model(expert, base=saved["base"].path)
    lora_path = expert / ckpt.LORA_FILE
    factors = load_file(str(lora_path))
    name = "llm.layers.0.self_attn.q_proj.lora_A"
    save_file({**factors, name: torch.zeros(4, 128)}, str(lora_path))
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"q_proj\.lora_A has shape \(4, 128\).*\(8, 128\)"):
        load_model(expert, base=saved["base"].path)


def test_wrong_base_missing_base_and_corrupt_files_raise(saved, tmp_path):
    other = save_base(build_model(make_config("tiny"), seed=1), tmp_path / "other", norm_stats=STATS,
                      instructions=["a"], provenance={})  # fmt: skip
    with pytest.raises(CheckpointError, match=r"trained on base .* but .*other is base"):
        load_model(saved["expert"].path, base=other.path)
    with pytest.raises(CheckpointError, match="needs its base"):
        load_model(saved["expert"].path)
    base = _copy(saved, tmp_path, "base")
    data = (base / ckpt.VLM_FILE).read_bytes()
    (base / ckpt.VLM_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"vlm\.safetensors: not a readable safetensors file"):
        load_model(base)


def test_expert_config_must_match_the_base(saved, tmp_path):
    expert = _copy(saved, tmp_path)
    config = json.loads((expert / ckpt.CONFIG_FILE).read_text())
    config["policy"]["action_expert"]["variant"] = "vla_adapter"
    (expert / ckpt.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="policy config differs from the base"):
        load_model(expert, base=saved["base"].path)


# --- released layouts, written here with upstream's names spelled out independently -------------------------


def _upstream_vlm_name(name: str) -> str:
    for ours, theirs in (
        ("vision.featurizer.", "vision_backbone.featurizer."),
        ("vision.fused_featurizer.", "vision_backbone.fused_featurizer."),
        ("llm.", "language_model.model."),
    ):
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name  # projector.fc1..3 and action_queries keep their names


class _NotATensor:
    pass


def test_released_vla_adapter_layout_loads(saved, tmp_path):
    model = saved["expert_model"]
    state = base_namespace(model.state_dict())
    release = tmp_path / "release"
    release.mkdir()
    vlm = {
        _upstream_vlm_name(k): v
        for k, v in state.items()
        if k.startswith(ckpt.VLM_PREFIXES + ("action_queries",))
    }
    vlm["language_model.lm_head.weight"] = state["llm.embed_tokens.weight"].clone()  # tied in the HF release
    save_file({k: v.contiguous() for k, v in vlm.items()}, str(release / "model.safetensors"))
    head = {
        "module.model." + k[len("action_head.") :].replace("blocks.", "mlp_resnet_blocks."): v.to(
            torch.bfloat16
        )
        for k, v in state.items()
        if k.startswith("action_head.")
    }
    torch.save(head, release / "action_head--150000_checkpoint.pt")
    proprio = {
        "module." + k[len("proprio_projector.") :]: v for k, v in state.items() if k.startswith("proprio_")
    }
    torch.save(proprio, release / "proprio_projector--150000_checkpoint.pt")
    stats = {"libero_object_no_noops": {**STATS.to_dict(), "num_transitions": 10}}
    (release / "dataset_statistics.json").write_text(json.dumps(stats))

    tensors, norm_stats = read_released_vla(release)
    assert set(tensors) == set(state)
    for name, tensor in tensors.items():
        expected = state[name].to(torch.bfloat16) if name.startswith("action_head.") else state[name]
        assert torch.equal(tensor, expected), name
    assert norm_stats == STATS
    config = make_config("tiny").replace(gripper_open_is_one=True)
    policy = VLAPolicy.from_state_dict(config, tensors, norm_stats)
    chunk = policy.predict(_observations(config, 1)[0])
    assert chunk.shape == (8, 7) and set(np.unique(chunk[:, -1])) <= {-1.0, 1.0}

    torch.save({"model.fc2.weight": _NotATensor()}, release / "action_head--150000_checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a weights-only torch checkpoint"):
        read_released_vla(release)


def test_prismatic_vlm_layout_loads(saved, tmp_path):
    state = saved["base_model"].state_dict()

    def gamma(name):
        return name.replace(".ls1.scale_factor", ".ls1.gamma").replace(".ls2.scale_factor", ".ls2.gamma")

    model = {
        "vision_backbone": {
            **{gamma("dino_featurizer." + k[len("vision.featurizer.") :]): v for k, v in state.items()
               if k.startswith("vision.featurizer.")},
            **{"siglip_featurizer." + k[len("vision.fused_featurizer.") :]: v for k, v in state.items()
               if k.startswith("vision.fused_featurizer.")},
        },
        "projector": {f"projector.{index}.{kind}": state[f"projector.fc{n}.{kind}"]
                      for n, index in ((1, 0), (2, 2), (3, 4)) for kind in ("weight", "bias")},
        "llm_backbone": {
            **{"llm.model." + k[len("llm.") :]: v for k, v in state.items() if k.startswith("llm.")},
            "llm.lm_head.weight": state["llm.embed_tokens.weight"],
        },
    }  # fmt: skip
    torch.save({"model": model}, tmp_path / "latest-checkpoint.pt")
    tensors = read_prismatic_vlm(tmp_path / "latest-checkpoint.pt")
    vlm = {k: v for k, v in state.items() if k.startswith(ckpt.VLM_PREFIXES)}
    assert set(tensors) == set(vlm)
    assert all(torch.equal(tensors[k], vlm[k]) for k in vlm)
    assert any(".ls1.scale_factor" in k for k in tensors)  # timm's gamma renamed
