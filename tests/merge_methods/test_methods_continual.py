"""Continual baselines (CARVE's Table 2 rows, continual TIES) and OPCM: hand-computed admissions on the q_proj
case of ``qproj.py``, the projection OPCM's paper states, and what the state keeps between admissions."""

from __future__ import annotations

import math

import pytest
import torch
from qproj import T1, T2, T3, W, full
from safetensors.torch import load_file

from vlamergebench.merge_methods.base import prefix
from vlamergebench.merge_methods.continual import continual_tsv
from vlamergebench.merge_methods.lowrank import dense_factors
from vlamergebench.merge_methods.opcm import project, split_rank
from vlamergebench.merge_methods.registry import make_method

torch.set_num_threads(1)


def admitted(name, experts, tmp_path, **overrides):
    """The merged model after each admission (1, 2, ...) and the base's q_proj weight."""
    models = make_method(name, **overrides).admissions(experts, tmp_path / name, progress=False)
    return models, load_file(str(experts.base.file("vlm.safetensors")))[W]


def q_proj(model, skill):
    return model.instantiate(skill).tensors[W]


# ---- continual TA (CARVE's averaging baseline) ------------------------------------------------------


def test_continual_ta_is_the_running_mean(three, tmp_path):
    method = make_method("continual_ta")
    base = load_file(str(three.base.file("vlm.safetensors")))[W]
    heads = [load_file(str(e.file("action_expert.safetensors"))) for e in three.experts]
    previous = None
    for count in (1, 2, 3):
        previous = method.admit(prefix(three, count), previous, tmp_path / f"t{count}", progress=False)
        mean = sum(full(t) for t in (T1, T2, T3)[:count]) / count
        for skill in three.skills[:count]:  # every skill seen so far runs the same model
            tensors = previous.instantiate(skill).tensors
            torch.testing.assert_close(tensors[W], base + mean)
            name = "action_head.fc2.weight"
            torch.testing.assert_close(tensors[name], sum(h[name] for h in heads[:count]) / count)
        assert previous.skills == three.skills[:count] and previous.state["admitted"] == count
    whole = method.merge(three, tmp_path / "whole", snapshot_dir=tmp_path / "snapshots", progress=False)
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["01", "02", "03"]
    torch.testing.assert_close(whole.instantiate("skill_0").tensors[W], base + full(T1 + T2 + T3) / 3)


# ---- continual TA with masks (CARVE's "TA-Mask") --------------------------------------------------------


def test_continual_ta_mask_by_hand_and_its_masks_go_stale(three, tmp_path):
    (first, second, third), base = admitted("continual_ta_mask", three, tmp_path)
    assert torch.equal(q_proj(first, "skill_0"), base + full(T1))  # S_1 = 1[tau_1 != 0]: the expert
    # Delta_2 = (T1 + T2) / 2 = [[-0.5, -1.5], [2, 0.25], [0.5, 0.5], [0, 0.75]]
    # S_1 = 1[|T1| > 0] = [[1, 1], [1, 0], [1, 1], [0, 1]]; S_2 = 1[|T2| > 0.6 |Delta_2 - T2|]: all but (3, 0)
    assert torch.equal(
        q_proj(second, "skill_0"),
        base + full(torch.tensor([[-0.5, -1.5], [2.0, 0.0], [0.5, 0.5], [0.0, 0.75]])),
    )
    assert torch.equal(
        q_proj(second, "skill_1"),
        base + full(torch.tensor([[-0.5, -1.5], [2.0, 0.25], [0.5, 0.5], [0.0, 0.75]])),
    )
    mask_of_skill_0 = [m.tensor_file("skills/00/masks.safetensors").read(W) for m in (first, second, third)]
    assert all(torch.equal(mask, mask_of_skill_0[0]) for mask in mask_of_skill_0)  # set once, never revised
    s1 = full(torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(q_proj(third, "skill_0"), base + s1 * full(T1 + T2 + T3) / 3)
    assert third.tensor_file("skills/02/masks.safetensors").nbytes(W) == 2  # 16 entries, one bit each
    assert set(third.state["mask_density"]) == {"skill_0", "skill_1", "skill_2"}


def test_a_mask_is_zero_where_its_skill_had_no_target(tmp_path, builders):
    from vlamergebench.policies.checkpoint import write_expert_set

    def drop_q_proj(files):
        for part in ("lora_A", "lora_B"):
            del files["lora.safetensors"][f"llm.layers.0.self_attn.q_proj.{part}"]

    base = builders.write_base(tmp_path / "base")
    experts = [
        builders.write_expert(tmp_path / "e0", base, "skill_0", 0, edit=drop_q_proj),  # no q_proj LoRA
        builders.write_expert(tmp_path / "e1", base, "skill_1", 1, factors=builders.q_proj_factors(T2)),
    ]
    stream = write_expert_set(tmp_path, "late-target", base, experts)
    (first, second), base_weight = admitted("continual_ta_mask", stream, tmp_path)
    assert W not in first.tensor_file("tau_merged.safetensors")  # not a target yet
    assert torch.equal(q_proj(second, "skill_0"), base_weight)  # skill_0's mask predates q_proj
    assert torch.equal(q_proj(second, "skill_1"), base_weight + full(T2) / 2)  # |T2| > 0.6 |T2 / 2 - T2|


def test_continual_masks_with_expert_heads(two, tmp_path):
    (_, second), _ = admitted("continual_ta_mask_heads", two, tmp_path)
    heads = [load_file(str(expert.file("action_expert.safetensors"))) for expert in two.experts]
    for index, skill in enumerate(two.skills):
        tensors = second.instantiate(skill).tensors
        for name in ("action_head.blocks.1.v_task.weight", "action_head.fc2.weight"):  # the expert head
            assert torch.equal(tensors[name], heads[index][name])
        shared = "action_head.blocks.0.v_task.weight"  # averaged: (h_1 + (h_2 - h_1) / 2)
        torch.testing.assert_close(tensors[shared], (heads[0][shared] + heads[1][shared]) / 2)


# ---- continual TIES (FusionBench's) ---------------------------------------------------------------------


def test_continual_ties_by_hand(two, tmp_path):
    # 88 target entries, keep 4 of each input. Delta_1 = 0.5 T1 = [[0.5, -1], [1.5, 0], [-0.5, 2], [0, 0.25]].
    # Admission 2: Delta_1 keeps |x| >= 0.5 (2, 1.5, 1, then 0.5 twice, ties kept); T2 keeps |x| >= 1.
    # Trimmed sum [[-1.5, -2], [2.5, 0], [1.5, -1], [0, 1]]; disjoint sum of the agreeing entries:
    # TIES = [[-2, -2], [2.5, 0], [2, -3], [0, 1]]; Delta_2 = Delta_1 + 0.5 TIES.
    (first, second), base = admitted("continual_ties", two, tmp_path, ties_keep_fraction=4.5 / 88)
    assert torch.equal(q_proj(first, "skill_0"), base + 0.5 * full(T1))  # lam tau_1, as FusionBench
    expected = full(torch.tensor([[-0.5, -2.0], [2.75, 0.0], [0.5, 0.5], [0.0, 0.75]]))
    assert torch.equal(q_proj(second, "skill_0"), base + expected)
    assert torch.equal(q_proj(second, "skill_1"), base + expected)  # one model for every skill
    assert second.state["ties_cutoffs"] == [0.5, 1.0]


# ---- continual TSV ---------------------------------------------------------------------------------------


def tsv_reference(inputs):
    """TSV-M in a few lines: top floor(min(m,n)/T) triplets of each, polar factors of the concatenations."""
    k = min(inputs[0].shape) // len(inputs)
    svds = [torch.linalg.svd(x.double(), full_matrices=False) for x in inputs]
    u = torch.cat([s.U[:, :k] for s in svds], dim=1)
    v = torch.cat([s.Vh[:k].T for s in svds], dim=1)
    sigma = torch.cat([s.S[:k] for s in svds])

    def polar(matrix):
        p, _, qh = torch.linalg.svd(matrix, full_matrices=False)
        return p @ qh

    return (polar(u) * sigma @ polar(v).T).float()


def test_continual_tsv_is_tsv_m_of_the_weighted_pair():
    generator = torch.Generator().manual_seed(3)
    taus = [torch.randn(6, 5, generator=generator) for _ in range(3)]
    delta = continual_tsv(torch.zeros(6, 5), dense_factors(taus[0]), 1)
    torch.testing.assert_close(delta, taus[0], atol=1e-5, rtol=1e-5)  # one admission: the expert
    expected = taus[0]
    for count in (2, 3):
        delta = continual_tsv(delta, dense_factors(taus[count - 1]), count)
        expected = tsv_reference([expected * (count - 1) / count, taus[count - 1] / count])
        torch.testing.assert_close(delta, expected, atol=1e-5, rtol=1e-5)


def test_continual_tsv_of_orthogonal_experts_is_the_running_mean(tmp_path, builders):
    x = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])  # u = e0, v = e0
    y = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # u = e2, v = e1
    experts = builders.build_q_proj_set(tmp_path / "xy", [x, y])
    (first, second), base = admitted("continual_tsv", experts, tmp_path)
    torch.testing.assert_close(q_proj(first, "skill_0"), base + full(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(q_proj(second, "skill_1"), base + full(x + y) / 2, atol=1e-6, rtol=0)


# ---- OPCM ------------------------------------------------------------------------------------------------


def test_split_rank_counts_the_leading_mass_up_to_alpha():
    sigma = torch.tensor([3.0, 1.0])  # cumulative shares 0.75, 1.0
    assert [split_rank(sigma, alpha) for alpha in (0.5, 0.75, 1.0)] == [0, 1, 2]
    assert split_rank(torch.zeros(0), 0.5) == 0


def test_opcm_projection_removes_exactly_the_protected_components():
    generator = torch.Generator().manual_seed(5)
    merged = torch.randn(7, 3, generator=generator) @ torch.randn(3, 6, generator=generator)  # rank 3
    tau = torch.randn(7, 6, generator=generator)
    u, sigma, vh = torch.linalg.svd(merged.double(), full_matrices=False)
    u, sigma, v = u[:, :3], sigma[:3], vh[:3].T
    r = split_rank(sigma, 0.6)
    assert r == 1  # a random rank-3 spectrum puts more than 0.6 of its mass in two directions
    cleaned = project(merged, tau, 0.6).double()
    before, after = u.T @ tau.double() @ v, u.T @ cleaned @ v
    protected = torch.eye(3, dtype=torch.bool)
    protected[:r, :r] = True
    assert float(after[protected].abs().max()) < 1e-5  # diagonal and the leading block: removed
    torch.testing.assert_close(after[~protected], before[~protected])  # other pairs: kept
    outside = torch.eye(7, dtype=torch.float64) - u @ u.T  # components outside span(U) x span(V): kept
    torch.testing.assert_close(outside @ cleaned, outside @ tau.double())
    torch.testing.assert_close(cleaned @ (torch.eye(6, dtype=torch.float64) - v @ v.T),
                               tau.double() @ (torch.eye(6, dtype=torch.float64) - v @ v.T))  # fmt: skip


@pytest.mark.parametrize(
    ("alpha", "kept"),
    [
        (0.5, [[0.0, 1.0], [4.0, 0.0], [0.0, 3.0], [1.0, 0.0]]),  # r = 0: only P_11 = 2, P_22 = 5 removed
        (1.0, [[0.0, 0.0], [0.0, 0.0], [0.0, 3.0], [1.0, 0.0]]),  # r = 2: the whole 2 x 2 block removed
    ],
)
def test_opcm_by_hand(tmp_path, builders, alpha, kept):
    first_block = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # sigma (3, 1) on e0, e1
    second_block = torch.tensor([[2.0, 1.0], [4.0, 5.0], [0.0, 3.0], [1.0, 0.0]])
    experts = builders.build_q_proj_set(tmp_path / "pair", [first_block, second_block])
    (first, second), base = admitted("opcm", experts, tmp_path, alpha=alpha)
    assert first.state["lambda"] == 1.0
    assert torch.equal(q_proj(first, "skill_0"), base + full(first_block))  # S_1 = tau_1, lambda_1 = 1
    total = first_block + torch.tensor(kept)
    mean_norm = (math.sqrt(10.0) + math.sqrt(56.0)) / 2  # ||tau_1||, ||tau_2||
    scale = float(total.norm()) / mean_norm
    assert second.state["lambda"] == pytest.approx(scale, rel=1e-6)
    assert second.state["task_norms"] == pytest.approx([math.sqrt(10.0), math.sqrt(56.0)])  # one per task
    for skill in experts.skills:
        torch.testing.assert_close(q_proj(second, skill), base + full(total) / scale, atol=1e-6, rtol=0)


def test_opcm_of_one_expert_is_the_expert(tmp_path, builders):
    one = builders.build_set(tmp_path / "one", count=1)
    opcm = make_method("opcm").merge(one, tmp_path / "opcm", progress=False).instantiate("skill_0").tensors
    bank = make_method("expert_bank").merge(one, tmp_path / "bank", progress=False).instantiate("skill_0")
    assert all(torch.equal(opcm[name], tensor) for name, tensor in bank.tensors.items())


def test_opcm_depends_on_the_admission_order(two, tmp_path):
    from vlamergebench.policies.checkpoint import write_expert_set

    swapped = write_expert_set(tmp_path / "swapped", "swapped", two.base.path,
                               [two.experts[1].path, two.experts[0].path])  # fmt: skip
    forward = make_method("opcm").merge(two, tmp_path / "forward", progress=False)
    backward = make_method("opcm").merge(swapped, tmp_path / "backward", progress=False)
    assert not torch.allclose(q_proj(forward, "skill_0"), q_proj(backward, "skill_0"))
    assert backward.state["task_norms"] == forward.state["task_norms"][::-1]  # kept in admission order
