"""Each method against results worked out by hand on 4 x 4 tensors, plus the issue's invariants.

The experts' only non-zero task vector is ``tau[q_proj] = [block | 0]`` (a 4 x 2 block, chosen below), so the
expected merged block can be written down from the method's rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from qproj import Q_PROJ, T1, T2, W, full, merged_q_proj
from safetensors.torch import load_file

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.registry import make_method
from vlamergebench.merge_methods.robustmerge import RobustMergeConfig, merge_factors, paper_delta

torch.set_num_threads(1)


def test_ta_by_hand(three, tmp_path):
    _, weight, base = merged_q_proj("ta", three, tmp_path, scale=0.5)
    # 0.5 * (T1 + T2 + T3) = 0.5 * [[0, -2], [0, 0.5], [1.5, 2], [0, -0.5]]; W = W0 + that, one float32
    # rounding
    assert torch.equal(
        weight, base + full(torch.tensor([[0.0, -1.0], [0.0, 0.25], [0.75, 1.0], [0.0, -0.25]]))
    )


def test_ta_of_one_expert_at_scale_one_is_that_expert(tmp_path, builders):
    one = builders.build_set(tmp_path / "one", count=1)
    ta = make_method("ta", scale=1.0).merge(one, tmp_path / "ta", progress=False).instantiate("skill_0")
    bank = make_method("expert_bank").merge(one, tmp_path / "bank", progress=False).instantiate("skill_0")
    assert ta.tensors.keys() == bank.tensors.keys()
    assert all(torch.equal(ta.tensors[n], bank.tensors[n]) for n in ta.tensors)
    assert ta.norm_stats == bank.norm_stats == one.experts[0].norm_stats()


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("ties_per_tensor", {"keep_fraction": 0.25}),
        ("ties", {"keep_fraction": 4.5 / 88}),
    ],  # 88 target entries
)
def test_ties_by_hand(three, tmp_path, name, overrides):
    # Each expert keeps its 4 largest magnitudes, ties at the cutoff included (|1| twice in T1):
    # T1 -> [[1,-2],[3,0],[-1,4],[0,0]], T2 -> [[-2,-1],[1,0],[2,-3],[0,1]], T3 ->
    # [[1,1],[-4,0],[0,1],[0,-2]]. Sums [[0,-2],[0,0],[1,2],[0,-1]]: entries (0,0) and (1,0) sum to exactly 0
    # -> 0. Disjoint means of agreeing:
    _, weight, base = merged_q_proj(name, three, tmp_path, **overrides)
    assert torch.equal(weight, base + full(torch.tensor([[0.0, -1.5], [0.0, 0.0], [2.0, 2.5], [0.0, -2.0]])))


def test_ties_sum_by_hand(three, tmp_path):
    _, weight, base = merged_q_proj(
        "ties_per_tensor", three, tmp_path, keep_fraction=0.25, reduce="sum", scale=2.0
    )
    assert torch.equal(
        weight, base + 2 * full(torch.tensor([[0.0, -3.0], [0.0, 0.0], [2.0, 5.0], [0.0, -2.0]]))
    )


def test_ties_of_identical_experts_is_the_expert(tmp_path, builders):
    donor = builders.build_set(tmp_path / "h", count=1).experts[0]
    head = load_file(str(donor.file("action_expert.safetensors")))
    same = builders.build_q_proj_set(tmp_path / "same", [T1, T1, T1], heads=[head, head, head])
    ties = make_method("ties", keep_fraction=1.0).merge(same, tmp_path / "ties", progress=False)
    bank = make_method("expert_bank").merge(same, tmp_path / "bank", progress=False)
    merged, expert = ties.instantiate("skill_0").tensors, bank.instantiate("skill_0").tensors
    for name in expert:
        torch.testing.assert_close(merged[name], expert[name], rtol=1e-6, atol=1e-7)


def test_dare_entries_are_dropped_or_rescaled(three, tmp_path, builders):
    one = builders.build_q_proj_set(tmp_path / "one", [T1])
    _, weight, base = merged_q_proj("dare", one, tmp_path, drop_fraction=0.5)
    dropped, kept = weight == base, weight == base + 2 * full(T1)  # each entry: dropped, or tau / (1 - 0.5)
    assert bool((dropped | kept).all()) and bool(dropped[:, :2].any()) and bool(kept[full(T1) != 0].any())
    _, no_drop, _ = merged_q_proj("dare", three, tmp_path / "z", drop_fraction=0.0)
    _, ta, _ = merged_q_proj("ta", three, tmp_path / "t")
    assert torch.equal(no_drop, ta)
    _, seeded, _ = merged_q_proj("dare", three, tmp_path / "s1", seed=1)
    _, other, _ = merged_q_proj("dare", three, tmp_path / "s2", seed=2)
    assert not torch.equal(seeded, other)


A1 = torch.tensor([[4.0, 1.0, 0.0, 0.0], [3.0, 2.0, 0.5, 0.0]])
B1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.5]])
A2 = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.5, 0.0, 0.0, 4.0]])
B2 = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 4.0]])
# keep 50%: A1 loses 0.5 (rows keep |.| 5/5 and 5/5.5 -> rho1 = [1, 1.1], floor = sorted(rho1)[1] = 1.1 -> s1
# = [1.1, 1.1]); A2, B1, B2 keep every non-zero (rho2 = [1, 1], s2 = [1, 1]).
A_STAR = torch.tensor([[4.0, 1.0, 2.0, 1.0], [3.5, 2.0, 0.0, 4.0]])
B_STAR = torch.tensor([[1.1, 1.0], [2.0, 2.2], [3.3, 0.0], [1.0, 4.55]]) / 2.1


def test_robustmerge_code_variant_by_hand(tmp_path, builders):
    config = RobustMergeConfig(keep_fraction=0.5, floor_rank=0.5, weight=1.0)
    merged_a, merged_b = merge_factors([(A1, B1), (A2, B2)], config)
    assert torch.equal(merged_a, A_STAR)
    torch.testing.assert_close(merged_b, B_STAR)
    experts = builders.build_q_proj_set(tmp_path / "rm", [torch.zeros(4, 2), torch.zeros(4, 2)])
    for index, (a, b) in enumerate([(A1, B1), (A2, B2)]):  # rewrite q_proj's factors of each expert
        path = experts.experts[index].file("lora.safetensors")
        factors = load_file(str(path))
        factors[Q_PROJ + ".lora_A"], factors[Q_PROJ + ".lora_B"] = a, b
        from safetensors.torch import save_file

        save_file(factors, str(path))
    _, weight, base = merged_q_proj(
        "robustmerge", experts, tmp_path, keep_fraction=0.5, floor_rank=0.5, weight=2.0
    )
    torch.testing.assert_close(
        weight, base + 2.0 * (2.0 * B_STAR) @ (2.0 * A_STAR)
    )  # lora scale 2, weight 2 on A and B


def test_robustmerge_paper_variant_is_lambda_times_summed_b_s_times_summed_a():
    """arXiv 2502.17159: Delta W = lambda (sum_n B~_n S~_n)(sum_n A~_n), S~ normalised across tasks."""
    config = RobustMergeConfig(variant="paper", keep_fraction=0.5, weight=2.0)
    # rho1 = [1, 1.1] (A1 loses its 0.5), rho2 = [1, 1] -> S~1 = [1/2, 1.1/2.1], S~2 = [1/2, 1/2.1]
    summed_b = B1 * torch.tensor([0.5, 1.1 / 2.1]) + B2 * torch.tensor([0.5, 1.0 / 2.1])
    expected = 2.0 * 2.0 * summed_b @ A_STAR  # lambda 2, LoRA scale 2; A_STAR = A~1 + A~2
    torch.testing.assert_close(paper_delta([(A1, B1), (A2, B2)], 2.0, config), expected)
    a1 = A1 * (A1.abs() > 0.5)  # A~1
    per_task = (B1 * torch.tensor([0.5, 1.1 / 2.1])) @ a1 + (B2 * torch.tensor([0.5, 1.0 / 2.1])) @ A2
    assert not torch.allclose(expected, 4.0 * per_task)  # the earlier reading, a sum of per-task products


def test_mergevla_masks_keep_exactly_the_formula(two, tmp_path):
    merged, weight, base = merged_q_proj("mergevla", two, tmp_path)
    # |T1| > 0.6 |T2| and |T2| > 0.6 |T1|, entry by entry:
    s1 = full(torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])).bool()
    s2 = full(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])).bool()
    for index, expected in enumerate((s1, s2)):
        packed = merged.tensor_file(f"skills/{index:02d}/masks.safetensors").read(W)
        assert packed.numel() == 2  # 16 entries at one bit each
        assert torch.equal(ops.unpack_bits(packed, (4, 4)), expected)
    # skill_0 = W0 + S1 * (T1 + T2), T1 + T2 = [[-1,-3],[4,0.5],[1,1],[0,1.5]]
    assert torch.equal(weight, base + full(torch.tensor([[0.0, -3.0], [4.0, 0.0], [0.0, 1.0], [0.0, 0.0]])))
    assert merged.state["expert_head_depth"] == 1 and merged.state["router_block"] == 0


def test_mergevla_ties_merge_and_heads(two, tmp_path):
    merged = make_method("mergevla_ties", router_rank=2).merge(two, tmp_path / "mv", progress=False)
    tau_merge = merged.tensor_file("tau_merge.safetensors").read(W)
    # elect sign of T1 + T2, then the disjoint *sum* of agreeing entries:
    assert torch.equal(tau_merge, full(torch.tensor([[-2.0, -3.0], [4.0, 0.5], [2.0, 4.0], [0.0, 1.5]])))
    heads = [load_file(str(e.file("action_expert.safetensors"))) for e in two.experts]
    for index, skill in enumerate(two.skills):
        tensors = merged.instantiate(skill).tensors
        for name in (
            "action_head.blocks.1.v_task.weight",
            "action_head.fc2.weight",
            "action_head.layer_norm2.weight",
        ):
            assert torch.equal(tensors[name], heads[index][name])  # the expert head is that skill's own
        for name in ("action_head.blocks.0.v_task.weight", "action_head.fc1.weight", "action_queries.weight"):
            torch.testing.assert_close(
                tensors[name], (heads[0][name] + heads[1][name]) / 2
            )  # shared: averaged
        keys = merged.tensor_file("router.safetensors").read(f"{index:02d}.v_adapter")
        weight = heads[index]["action_head.blocks.0.v_adapter.weight"]
        singular = torch.linalg.svdvals(weight)
        assert keys.shape == (2, 4)
        torch.testing.assert_close(keys @ keys.T, torch.eye(2), atol=1e-5, rtol=0)
        # the two rows span the top-2 right singular subspace: ||W R^T||^2 = s1^2 + s2^2
        assert (weight @ keys.T).square().sum().item() == pytest.approx(
            float(singular[:2].square().sum()), rel=1e-5
        )


def test_mergevla_without_expert_heads_averages_the_whole_action_expert(two, tmp_path):
    """MergeVLA's ablation "w/o expert head": the same masked VLM, every action-expert tensor averaged."""
    merged = make_method("mergevla", expert_heads=False).merge(two, tmp_path / "mv", progress=False)
    with_heads = make_method("mergevla").merge(two, tmp_path / "mv_heads", progress=False)
    heads = [load_file(str(e.file("action_expert.safetensors"))) for e in two.experts]
    for skill in two.skills:
        tensors = merged.instantiate(skill).tensors
        for name in heads[0]:
            torch.testing.assert_close(tensors[name], (heads[0][name] + heads[1][name]) / 2)
        assert torch.equal(tensors[W], with_heads.instantiate(skill).tensors[W])  # the VLM side is unchanged
    assert merged.state["expert_head_depth"] == 0
    assert not merged.tensor_file("skills/00/expert_head.safetensors").names


def test_carve_by_hand(two, tmp_path):
    method = make_method("carve", residual_dtype="float32")
    first = method.admit(_prefix(two, 1), None, tmp_path / "t1", progress=False)
    residual = first.tensor_file("skills/00/residual.safetensors")
    assert all(not residual.read(name).any() for name in residual.names)  # a_1 = 1: r_1 = 0 exactly
    assert torch.equal(first.tensor_file("core.safetensors").read(W), full(T1))
    bank = make_method("expert_bank").merge(two, tmp_path / "bank", progress=False)
    alone, expert = first.instantiate("skill_0").tensors, bank.instantiate("skill_0").tensors
    assert torch.equal(alone[W], expert[W])  # skill 1 is the expert (the head up to float rounding)
    for name, tensor in expert.items():
        torch.testing.assert_close(alone[name], tensor, rtol=1e-6, atol=1e-6)

    second = method.admit(two, first, tmp_path / "t2", progress=False)
    a = 1 / math.sqrt(2)
    core = full(torch.tensor([
        [1.0, (1 - a) * -2 + a * -1],  # (0,0) signs differ: kept; (0,1) same sign: moved
        [(1 - a) * 3 + a * 1, a * 0.5],  # (1,1) empty core: protected
        [-1.0, 4.0],  # signs differ: kept
        [0.0, (1 - a) * 0.5 + a * 1.0],
    ]))  # fmt: skip
    torch.testing.assert_close(second.tensor_file("core.safetensors").read(W), core)
    beta = {
        skill: min(1.0, float(full(t).norm() / core.norm()))
        for skill, t in zip(two.skills, (T1, T2), strict=True)
    }
    assert beta["skill_0"] == 1.0 and beta["skill_1"] == pytest.approx(4.5 / float(core.norm()))
    base = load_file(str(two.base.file("vlm.safetensors")))[W]
    torch.testing.assert_close(second.instantiate("skill_0").tensors[W], base + core)  # drifted: forgetting
    expected = base + beta["skill_1"] * core + (full(T2) - core)
    torch.testing.assert_close(second.instantiate("skill_1").tensors[W], expected)
    assert second.tensor_file("skills/00/residual.safetensors").read(W + ".raw").abs().sum() == 0


def test_carve_vlm_keeps_each_skills_own_action_expert_and_merges_the_vlm_like_carve(two, tmp_path):
    carve = make_method("carve", residual_dtype="float32").merge(two, tmp_path / "carve", progress=False)
    vlm_only = make_method("carve_vlm", residual_dtype="float32").merge(two, tmp_path / "vlm", progress=False)
    bank = make_method("expert_bank").merge(two, tmp_path / "bank", progress=False)
    assert not any(n.startswith("action_head.") for n in vlm_only.tensor_file("core.safetensors").names)
    for skill in two.skills:
        ours, expert = vlm_only.instantiate(skill).tensors, bank.instantiate(skill).tensors
        heads = [n for n in expert if n.startswith(("action_head.", "action_queries.", "proprio_projector."))]
        assert heads and all(torch.equal(ours[n], expert[n]) for n in heads)  # the skill's own, bit for bit
        torch.testing.assert_close(ours[W], carve.instantiate(skill).tensors[W])  # the VLM as CARVE's
    stored = {f.path for f in vlm_only.storage.files}
    assert {f"skills/{i:02d}/action_expert.safetensors" for i in range(len(two.skills))} <= stored


def test_carve_rank_r_residual_error_is_the_spectral_tail(two, tmp_path):
    method = make_method("carve", residual_dtype="float32", min_factorise_numel=8, rank=1)
    first = method.admit(_prefix(two, 1), None, tmp_path / "t1", progress=False)
    second = method.admit(two, first, tmp_path / "t2", progress=False)
    residual = full(T2) - second.tensor_file("core.safetensors").read(W)
    stored = second.tensor_file("skills/01/residual.safetensors")
    u, v = stored.read(W + ".U"), stored.read(W + ".V")
    assert u.shape == (4, 1) and v.shape == (4, 1)
    tail = torch.linalg.svdvals(residual)[1:]
    assert torch.linalg.norm(residual - u @ v.T).item() == pytest.approx(tail.norm().item(), rel=1e-5)
    empty = first.tensor_file("skills/00/residual.safetensors")
    assert empty.shape(W + ".U") == (4, 0)  # the first residual is zero: stored with rank 0


def _prefix(experts, count):
    from vlamergebench.merge_methods.base import prefix

    return prefix(experts, count)


def test_consensus_ta_by_hand(three, tmp_path):
    # tau_MTL = T1 + T2 + T3 = [[0,-2],[0,0.5],[1.5,2],[0,-0.5]]. TALL masks |T_t| > 0.6 |tau_MTL - T_t|:
    # T1 -> [[1,1],[1,0],[0,1],[0,0]], T2 -> [[1,1],[1,1],[1,0],[0,1]], T3 -> [[1,0],[1,0],[0,1],[0,1]].
    # Votes [[3,2],[3,1],[1,2],[0,2]]; kept where >= 2: [[1,1],[1,0],[0,1],[0,1]].
    merged, weight, base = merged_q_proj("consensus_ta", three, tmp_path)
    assert torch.equal(weight, base + full(torch.tensor([[0.0, -2.0], [0.0, 0.0], [0.0, 2.0], [0.0, -0.5]])))
    _, all_votes, _ = merged_q_proj("consensus_ta", three, tmp_path / "k1", min_agreement=1)
    assert torch.equal(
        all_votes, base + full(torch.tensor([[0.0, -2.0], [0.0, 0.5], [1.5, 2.0], [0.0, -0.5]]))
    )
    assert 0.0 < merged.state["kept_fraction"] < 1.0


@pytest.mark.parametrize("inner", ["ta", "mergevla"])
def test_diagnostic_hybrids_put_back_exactly_one_half_of_each_skill(two, tmp_path, inner):
    """<method>_own_head: the method's VLM + the skill's own head; <method>_own_vlm: the reverse."""
    merged = make_method(inner).merge(two, tmp_path / inner, progress=False)
    own_head = make_method(f"{inner}_own_head").merge(two, tmp_path / "head", progress=False)
    own_vlm = make_method(f"{inner}_own_vlm").merge(two, tmp_path / "vlm", progress=False)
    bank = make_method("expert_bank").merge(two, tmp_path / "bank", progress=False)
    heads = ("action_head.", "action_queries.", "proprio_projector.")
    for skill in two.skills:
        method, expert = merged.instantiate(skill).tensors, bank.instantiate(skill).tensors
        for hybrid, own_prefixes in ((own_head, heads), (own_vlm, None)):
            tensors = hybrid.instantiate(skill).tensors
            assert set(tensors) == set(expert)
            for name, value in tensors.items():
                is_head = name.startswith(heads)
                from_expert = is_head if own_prefixes else not is_head
                reference = expert[name] if from_expert else method[name]
                torch.testing.assert_close(value, reference, rtol=1e-6, atol=1e-6, msg=name)
