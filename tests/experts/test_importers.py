"""Importers: a real PEFT adapter (written by ``PeftModel.save_pretrained``) and a released MergeVLA /
VLA-Adapter directory (upstream key names, reduced width), round-tripped to the same tensors and merged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "eval"))

from tinyexperts import SKILLS, STATS  # noqa: E402

from vlamergebench.cli import main  # noqa: E402
from vlamergebench.experts.importers import (  # noqa: E402
    import_dense_finetune,
    import_peft_adapter,
    import_released_expert,
    read_peft_adapter,
)
from vlamergebench.policies.checkpoint import (  # noqa: E402
    CheckpointDir,
    CheckpointError,
    ExpertSet,
    file_sha256,
)
from vlamergebench.policies.io import load_model, save_base  # noqa: E402
from vlamergebench.policies.lora import base_namespace, lora_targets  # noqa: E402
from vlamergebench.policies.model import build_model, init_head  # noqa: E402
from vlamergebench.policies.registry import make_config  # noqa: E402

RANK, ALPHA = 4, 8.0


def _upstream(name: str) -> str:
    """Our module/tensor name as the released HF VLA spells it (written out independently of the reader)."""
    for ours, theirs in (
        ("vision.featurizer.", "vision_backbone.featurizer."),
        ("vision.fused_featurizer.", "vision_backbone.fused_featurizer."),
        ("llm.", "language_model.model."),
    ):
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    return name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base, and a PEFT LoRA model on it with random factors and a changed head."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("import")
    config = make_config("tiny")
    base = save_base(build_model(config, seed=0).eval(), root / "base", norm_stats=STATS, instructions=["b"],
                     provenance={})  # fmt: skip
    model, _ = load_model(base.path)
    targets = lora_targets(model, config.lora)
    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights="gaussian")
    peft_model = get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name or ".action_head." in name:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    adapter = root / "adapter"
    peft_model.save_pretrained(str(adapter))
    factors = {
        name.removeprefix("base_model.model.").replace(".default", ""): param.detach().clone()
        for name, param in peft_model.named_parameters()
        if "lora_" in name
    }
    folded = base_namespace(peft_model.merge_and_unload().state_dict())
    return {
        "root": root,
        "base": base,
        "adapter": adapter,
        "factors": factors,
        "folded": folded,
        "targets": targets,
    }


def test_peft_adapter_round_trips_to_the_same_factors_and_weights(trained, tmp_path):
    saved = load_file(str(trained["adapter"] / "adapter_model.safetensors"))
    assert all(name.startswith("base_model.model.") for name in saved)  # peft's own key names
    expert = import_peft_adapter(trained["adapter"], trained["base"], tmp_path / "object_0", skill=SKILLS[0],
                                 instructions=["pick"])  # fmt: skip
    stored = load_file(str(expert.file("lora.safetensors")))
    assert len(stored) == 2 * len(trained["targets"])
    for name, tensor in trained["factors"].items():  # "<module>.lora_A.weight" in peft's naming
        module, _, factor = name.removesuffix(".weight").rpartition(".")
        assert torch.equal(stored[f"{module}.{factor}"], tensor), name
    assert (expert.config["lora"]["rank"], expert.config["lora"]["alpha"]) == (RANK, ALPHA)
    model, _ = load_model(expert.path, trained["base"].path, fold=True)
    ours = base_namespace(model.state_dict())
    for name in trained["targets"]:
        torch.testing.assert_close(ours[name + ".weight"], trained["folded"][name + ".weight"])
    head = load_file(str(expert.file("action_expert.safetensors")))
    base_head = load_file(str(trained["base"].file("action_expert.safetensors")))
    assert all(torch.equal(head[name], base_head[name]) for name in head)  # a PEFT adapter has no head


def test_peft_options_that_change_the_update_rule_are_refused(trained, tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = json.loads((trained["adapter"] / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    with pytest.raises(CheckpointError, match=r"use_rslora is set \(rsLoRA scaling"):
        read_peft_adapter(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    save_file({"base_model.model.llm.embed_tokens.lora_embedding_A": torch.zeros(4, 8)},
              str(adapter / "adapter_model.safetensors"))  # fmt: skip
    with pytest.raises(CheckpointError, match="is not base_model.model.<module>.lora_A/B.weight"):
        read_peft_adapter(adapter)


def _write_release(trained, release: Path, weights=None) -> None:
    """A released expert directory in upstream's layout: dense VLM, .pt head files, stats, lora_adapter/.

    With ``weights`` (a whole model in our names), those and no ``lora_adapter/``: a dense release.
    """
    release.mkdir()
    folded = trained["folded"] if weights is None else weights
    vlm = {
        _upstream(k): v.contiguous()
        for k, v in folded.items()
        if not k.startswith(("action_head.", "proprio_"))
    }
    save_file(vlm, str(release / "model.safetensors"))
    head = {"module.model." + k[len("action_head."):].replace("blocks.", "mlp_resnet_blocks."): v
            for k, v in folded.items() if k.startswith("action_head.")}  # fmt: skip
    torch.save(head, release / "action_head--150000_checkpoint.pt")
    proprio = {
        "module." + k[len("proprio_projector.") :]: v for k, v in folded.items() if k.startswith("proprio_")
    }
    torch.save(proprio, release / "proprio_projector--150000_checkpoint.pt")
    stats = {"libero_object_no_noops": STATS.to_dict(), "libero_goal_no_noops": STATS.to_dict()}
    (release / "dataset_statistics.json").write_text(json.dumps(stats))
    if weights is not None:
        return
    adapter = release / "lora_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text((trained["adapter"] / "adapter_config.json").read_text())
    tensors = load_file(str(trained["adapter"] / "adapter_model.safetensors"))
    renamed = {
        "base_model.model." + _upstream(k.removeprefix("base_model.model.")): v for k, v in tensors.items()
    }
    save_file(renamed, str(adapter / "adapter_model.safetensors"))


def test_released_layouts_import_through_the_cli_and_merge(trained, tmp_path, capsys):
    _write_release(trained, tmp_path / "release_object")
    spec = {
        "name": "imported",
        "experts": [
            {"released": "release_object", "unnorm_key": "libero_object_no_noops", "skill": SKILLS[0]},
            {"peft": str(trained["adapter"]), "skill": SKILLS[1], "instructions": ["put the bowl"]},
        ],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "set"
    command = ["import-experts", "--base", str(trained["base"].path), "--spec", str(tmp_path / "spec.json"),
               "--out", str(out)]  # fmt: skip
    assert main(command) == 0, capsys.readouterr().err
    experts = ExpertSet.open(out)
    assert experts.skills == ["object_0", "spatial_0"]
    released = load_file(str(experts.experts[0].file("action_expert.safetensors")))
    for name, tensor in trained["folded"].items():
        if name.startswith(("action_head.", "action_queries.", "proprio_projector.")):
            assert torch.equal(released[name], tensor), name
    assert experts.experts[0].norm_stats() == STATS
    assert main(["merge", "--method", "ta", "--experts", str(out), "--out", str(tmp_path / "ta"),
                 "--no-progress"]) == 0  # fmt: skip

    wrong_base = save_base(build_model(make_config("tiny"), seed=1).eval(), tmp_path / "other_base",
                           norm_stats=STATS, instructions=["b"], provenance={})  # fmt: skip
    spec["experts"] = spec["experts"][:1]
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main([*command[:2], str(wrong_base.path), *command[3:-1], str(tmp_path / "set2")]) == 1
    assert (
        "is " + str(wrong_base.path) + " the base these experts were trained on?" in capsys.readouterr().err
    )
    assert not (tmp_path / "set2" / "expert_set.json").exists()


def _finetune(base_path: Path, seed: int) -> dict[str, torch.Tensor]:
    """A dense full fine-tune of the base, made by seeded noise: LLM, projector and head moved, vision not."""
    model, _ = load_model(base_path)
    generator = torch.Generator().manual_seed(seed)
    return {
        name: tensor + 0.001 * torch.randn(tensor.shape, generator=generator)
        if name.startswith(("llm.", "projector.", "action_head.", "action_queries.", "proprio_projector."))
        else tensor.clone()
        for name, tensor in base_namespace(model.state_dict()).items()
    }


def test_dense_finetunes_import_and_merge_by_hand_and_lora_methods_refuse(trained, tmp_path, capsys):
    base = trained["base"]
    ours, theirs = _finetune(base.path, 11), _finetune(base.path, 12)
    save_file(ours, str(tmp_path / "finetune_object.safetensors"))  # the whole model, our names
    released = tmp_path / "finetune_spatial"
    released.mkdir()  # a released-layout VLM directory: HF names, no head (the expert takes the base's)
    save_file({_upstream(k): v for k, v in theirs.items() if k.startswith(("llm.", "vision.", "projector."))},
              str(released / "model.safetensors"))  # fmt: skip
    spec = {"name": "dense", "experts": [
        {"dense": "finetune_object.safetensors", "skill": SKILLS[0], "instructions": ["pick"]},
        {"dense": "finetune_spatial", "skill": SKILLS[1]},
    ]}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = tmp_path / "set"
    assert main(["import-experts", "--base", str(base.path), "--spec", str(tmp_path / "spec.json"),
                 "--out", str(out)]) == 0, capsys.readouterr().err  # fmt: skip
    experts = ExpertSet.open(out)
    assert [expert.is_dense_expert for expert in experts.experts] == [True, True]
    dense = load_file(str(experts.experts[0].file("dense.safetensors")))  # the vision towers did not move
    assert sorted(dense) == sorted(n for n in ours if n.startswith(("llm.", "projector.")))
    model, _ = load_model(experts.experts[0].path, base.path)
    assert all(torch.equal(t, ours[n]) for n, t in base_namespace(model.state_dict()).items())

    assert main(["merge", "--method", "ta", "--set", "scale=0.5", "--experts", str(out),
                 "--out", str(tmp_path / "ta"), "--no-progress"]) == 0  # fmt: skip
    merged = load_file(str(tmp_path / "ta" / "vlm.safetensors"))
    base_vlm = load_file(str(base.file("vlm.safetensors")))
    for name, weight in base_vlm.items():  # by hand: W_0 + lambda * sum_t (W_t - W_0)
        expected = weight + 0.5 * ((ours[name] - weight) + (theirs[name] - weight))
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-6)
    head = load_file(str(tmp_path / "ta" / "action_expert.safetensors"))
    base_head = load_file(str(base.file("action_expert.safetensors")))
    for name, tensor in head.items():  # the average of the fine-tune's head and the base's (expert 2's)
        torch.testing.assert_close(tensor, (ours[name] + base_head[name]) / 2)

    capsys.readouterr()
    assert main(["merge", "--method", "lora_bank", "--experts", str(out), "--out", str(tmp_path / "bank"),
                 "--no-progress"]) == 2  # fmt: skip
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert (
        f"expert 'object_0' ({experts.experts[0].path}): found a dense task vector (dense.safetensors"
        in error
    )
    assert "merge method 'lora_bank' needs LoRA factors (lora.safetensors" in error

    wrong_base = save_base(build_model(make_config("tiny"), seed=1).eval(), tmp_path / "other_base",
                           norm_stats=STATS, instructions=["b"], provenance={})  # fmt: skip
    with pytest.raises(CheckpointError, match="the base it was tuned from"):
        import_dense_finetune(
            tmp_path / "finetune_object.safetensors", wrong_base, tmp_path / "x", skill=SKILLS[0]
        )
    save_file(
        {k: v for k, v in ours.items() if k != "llm.norm.weight"}, str(tmp_path / "partial.safetensors")
    )
    with pytest.raises(
        CheckpointError, match=r"not the base's architecture: missing VLM tensors \['llm.norm.weight'\]"
    ):
        import_dense_finetune(tmp_path / "partial.safetensors", base, tmp_path / "y", skill=SKILLS[0])


def test_a_released_expert_without_lora_adapter_imports_as_a_dense_expert(trained, tmp_path):
    finetune = _finetune(trained["base"].path, 13)
    _write_release(trained, tmp_path / "release", finetune)  # a fully fine-tuned release: no lora_adapter/
    expert = import_released_expert(tmp_path / "release", trained["base"], tmp_path / "expert",
                                    skill=SKILLS[0], unnorm_key="libero_object_no_noops")  # fmt: skip
    assert expert.is_dense_expert
    dense = load_file(str(expert.file("dense.safetensors")))
    assert sorted(dense) == sorted(n for n in finetune if n.startswith(("llm.", "projector.")))
    assert all(torch.equal(tensor, finetune[name]) for name, tensor in dense.items())
    head = load_file(str(expert.file("action_expert.safetensors")))  # from the release's .pt files
    assert all(torch.equal(tensor, finetune[name]) for name, tensor in head.items())
    assert expert.norm_stats() == STATS


def test_released_directories_become_a_base_with_the_same_tensors(trained, tmp_path, capsys):
    weights = base_namespace(build_model(make_config("tiny"), seed=3).state_dict())
    _write_release(trained, tmp_path / "vla", weights)  # upstream names, .pt head files, two datasets' stats
    command = ["import-base", "--preset", "tiny", "--unnorm-key", "libero_goal_no_noops"]
    assert main([*command, "--released", str(tmp_path / "vla"), "--out", str(tmp_path / "base")]) == 0
    assert "head from the release" in capsys.readouterr().out
    base = CheckpointDir.open(tmp_path / "base")
    stored = {
        **load_file(str(base.file("vlm.safetensors"))),
        **load_file(str(base.file("action_expert.safetensors"))),
    }
    assert sorted(stored) == sorted(weights)
    assert all(torch.equal(stored[name], tensor) for name, tensor in weights.items())
    assert base.base_id == file_sha256(base.file("vlm.safetensors")) and base.norm_stats() == STATS

    vlm_only = tmp_path / "vlm"  # a released VLM: model.safetensors alone, no action queries or head
    vlm_only.mkdir()
    vlm = {_upstream(k): v for k, v in weights.items() if k.startswith(("llm.", "vision.", "projector."))}
    save_file(vlm, str(vlm_only / "model.safetensors"))
    assert (
        main(["import-base", "--preset", "tiny", "--released", str(vlm_only), "--out", str(tmp_path / "b2")])
        == 0
    )
    seeded = build_model(make_config("tiny"), seed=0)
    init_head(seeded, 7)
    expected = {
        **weights,
        **{n: t for n, t in seeded.state_dict().items() if n.startswith(("action_", "proprio_"))},
    }
    model, checkpoint = load_model(tmp_path / "b2")
    assert all(torch.equal(t, expected[n]) for n, t in base_namespace(model.state_dict()).items())
    assert checkpoint.config["provenance"]["head_init_seed"] == 7
    assert checkpoint.norm_stats().action_q99 == (1.0,) * 7  # no statistics released: the identity

    capsys.readouterr()
    assert main(["import-base", "--preset", "small", "--released", str(tmp_path / "vla"),
                 "--unnorm-key", "libero_goal_no_noops", "--out", str(tmp_path / "b3")]) == 1  # fmt: skip
    error = capsys.readouterr().err
    assert "as policy 'small'" in error and "missing tensor(s)" in error
    assert not (tmp_path / "b3").exists()
