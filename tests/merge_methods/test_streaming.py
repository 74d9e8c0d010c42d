"""Streaming merges equal in-memory ones; storage is what is on disk; continual snapshots."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.merged import MergedModel
from vlamergebench.merge_methods.registry import make_method

torch.set_num_threads(1)


def in_memory_task_vectors(experts):
    """Every expert's task vectors, computed from whole files loaded at once (no streaming)."""
    base = load_file(str(experts.base.file("vlm.safetensors")))
    result = []
    for expert in experts.experts:
        factors = load_file(str(expert.file("lora.safetensors")))
        taus = {}
        for name in base:
            module = name[: -len(".weight")]
            if module + ".lora_A" in factors:
                taus[name] = expert.lora_scale * (factors[module + ".lora_B"] @ factors[module + ".lora_A"])
        result.append(taus)
    return base, result


def averaged_heads(experts):
    heads = [load_file(str(expert.file("action_expert.safetensors"))) for expert in experts.experts]
    return {name: sum(head[name] for head in heads) / len(heads) for name in heads[0]}


def assert_same(merged, expected):
    tensors = merged.instantiate(merged.skills[0]).tensors
    assert tensors.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensors[name], tensor), name


def test_ta_streaming_equals_in_memory(hand_set, tmp_path):
    base, taus = in_memory_task_vectors(hand_set)
    expected = dict(base)
    for name in taus[0]:
        total = taus[0][name] + taus[1][name] + taus[2][name]  # the streamed running sum, in admission order
        expected[name] = base[name] + 0.7 * total
    expected.update(averaged_heads(hand_set))
    assert_same(make_method("ta", scale=0.7).merge(hand_set, tmp_path / "ta", progress=False), expected)


def test_global_ties_streaming_equals_in_memory_sort(hand_set, tmp_path):
    base, taus = in_memory_task_vectors(hand_set)
    names = list(taus[0])
    thresholds = []
    for expert_taus in taus:  # the global top-k threshold from a full sort of the flattened task vector
        flat = torch.cat([expert_taus[name].flatten() for name in names]).abs().sort(descending=True).values
        thresholds.append(float(flat[int(0.3 * flat.numel()) - 1]))
    expected = dict(base)
    for name in names:
        stacked = torch.stack([ops.trim_below(t[name], c) for t, c in zip(taus, thresholds, strict=True)])
        expected[name] = base[name] + ops.disjoint_merge(stacked, ops.elect_sign(stacked), "mean")
    expected.update(averaged_heads(hand_set))
    merged = make_method("ties", keep_fraction=0.3).merge(hand_set, tmp_path / "ties", progress=False)
    assert list(merged.state["thresholds"].values()) == thresholds
    assert_same(merged, expected)


def test_continual_ties_streaming_equals_in_memory(hand_set, tmp_path):
    base, taus = in_memory_task_vectors(hand_set)
    names = list(taus[0])

    def cutoff(vectors):  # the global top-20% threshold from a full sort of the flattened vector
        flat = torch.cat([vectors[name].flatten() for name in names]).abs().sort(descending=True).values
        return float(flat[int(0.2 * flat.numel()) - 1])

    delta = {name: 0.5 * taus[0][name] for name in names}
    for tau in taus[1:]:
        cutoffs = (cutoff(delta), cutoff(tau))
        for name in names:
            stacked = torch.stack(
                [ops.trim_below(delta[name], cutoffs[0]), ops.trim_below(tau[name], cutoffs[1])]
            )
            delta[name] = delta[name] + 0.5 * ops.disjoint_merge(stacked, ops.elect_sign(stacked), "sum")
    expected = {**base, **{name: base[name] + delta[name] for name in names}}
    heads = [load_file(str(expert.file("action_expert.safetensors"))) for expert in hand_set.experts]
    for name in heads[0]:  # the running mean, in admission order
        mean = torch.zeros_like(heads[0][name])
        for count, head in enumerate(heads, start=1):
            mean = mean + (head[name] - mean) / count
        expected[name] = mean
    merged = make_method("continual_ties").merge(hand_set, tmp_path / "ties", progress=False)
    assert_same(merged, expected)


def test_dare_streaming_equals_in_memory(hand_set, tmp_path):
    base, taus = in_memory_task_vectors(hand_set)
    expected = dict(base)
    for name in taus[0]:
        dropped = [ops.drop_and_rescale(t[name], 0.3, ops.generator_for(4, skill, name))
                   for t, skill in zip(taus, hand_set.skills, strict=True)]  # fmt: skip
        expected[name] = base[name] + torch.stack(dropped).sum(dim=0)
    expected.update(averaged_heads(hand_set))
    merged = make_method("dare", drop_fraction=0.3, seed=4).merge(hand_set, tmp_path / "dare", progress=False)
    assert_same(merged, expected)


def test_dense_and_lora_task_vectors_agree(hand_set, tmp_path):
    from_lora = (
        make_method("ta").merge(hand_set, tmp_path / "lora", progress=False).instantiate("skill_0").tensors
    )
    from_dense = make_method("ta", task_vectors="dense").merge(hand_set, tmp_path / "dense", progress=False)
    for name, tensor in from_dense.instantiate("skill_0").tensors.items():
        torch.testing.assert_close(tensor, from_lora[name], rtol=1e-5, atol=1e-5)


def test_lora_bank_storage_is_the_lora_bank_plus_its_manifest(hand_set, tmp_path):
    merged = make_method("lora_bank").merge(hand_set, tmp_path / "bank", progress=False)
    storage = merged.storage
    assert storage.total_bytes - storage.lora_bank_bytes == os.path.getsize(merged.path / "merged.json")
    on_disk = sum(
        p.stat().st_size for p in merged.path.rglob("*") if p.is_file() and p.name != "storage.json"
    )
    assert storage.total_bytes == on_disk + os.path.getsize(hand_set.base.file("vlm.safetensors"))
    by_hand = os.path.getsize(hand_set.base.file("vlm.safetensors")) + sum(
        os.path.getsize(e.file(f)) for e in hand_set.experts
        for f in ("lora.safetensors", "action_expert.safetensors", "norm_stats.json")
    )  # fmt: skip
    assert storage.lora_bank_bytes == by_hand
    assert storage.fraction_of_lora_bank == pytest.approx(storage.total_bytes / by_hand)
    assert storage.by_component()["base"] == os.path.getsize(hand_set.base.file("vlm.safetensors"))
    tensors = [load_file(str(hand_set.base.file("vlm.safetensors")))] + [
        load_file(str(e.file(f)))
        for e in hand_set.experts
        for f in ("lora.safetensors", "action_expert.safetensors")
    ]
    assert storage.parameters == sum(t.numel() for file in tensors for t in file.values()) > 0


def test_mergevla_masks_are_stored_packed(hand_set, tmp_path):
    merged = make_method("mergevla").merge(hand_set, tmp_path / "mv", progress=False)
    masks = merged.tensor_file("skills/00/masks.safetensors")
    vlm = load_file(str(hand_set.base.file("vlm.safetensors")))
    for name in masks.names:
        assert masks.nbytes(name) == (vlm[name].numel() + 7) // 8
    assert 0.0 < merged.state["selfish_fraction"] <= 1.0


def test_continual_snapshots_after_every_admission(hand_set, tmp_path):
    final = make_method("carve").merge(
        hand_set, tmp_path / "final", snapshot_dir=tmp_path / "steps", progress=False
    )
    steps = sorted((tmp_path / "steps").iterdir())
    assert [step.name for step in steps] == ["01", "02", "03"]
    for count, step in enumerate(steps, start=1):
        snapshot = MergedModel(step)
        assert snapshot.skills == hand_set.skills[:count] and snapshot.state["admitted"] == count
        for skill in snapshot.skills:  # every seen skill can be instantiated after each admission
            assert snapshot.instantiate(skill).tensors
    assert final.state == MergedModel(steps[-1]).state
    first = MergedModel(steps[0])
    with pytest.raises(ValueError, match="admitting"):
        make_method("carve").admit(hand_set, first, tmp_path / "skip", progress=False)  # skill_1 skipped
    with pytest.raises(ValueError, match="another method or config"):
        from vlamergebench.merge_methods.base import prefix

        make_method("carve", rank=2).admit(prefix(hand_set, 2), first, tmp_path / "other", progress=False)
