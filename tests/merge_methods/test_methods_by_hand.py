"""``base``, ``dare_ties``, ``consensus_ties`` and ``robustmerge_paper`` against results worked out by hand on
4 x 4 q_proj blocks (as in ``test_methods.py``: each expert's only non-zero task vector is ``[T_t | 0]``)."""

from __future__ import annotations

import torch
from qproj import Q_PROJ, T1, W, full, merged_q_proj
from safetensors.torch import load_file, save_file

from vlamergebench.merge_methods.registry import make_method

torch.set_num_threads(1)
A1 = torch.tensor([[4.0, 1.0, 0.0, 0.0], [3.0, 2.0, 0.5, 0.0]])
B1 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.5]])
A2 = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.5, 0.0, 0.0, 4.0]])
B2 = torch.tensor([[0.0, 1.0], [2.0, 0.0], [0.0, 0.0], [1.0, 4.0]])


def test_base_runs_the_base_checkpoint_unchanged(three, tmp_path):
    merged = make_method("base").merge(three, tmp_path / "base", progress=False)
    base_vlm = load_file(str(three.base.file("vlm.safetensors")))
    base_head = load_file(str(three.base.file("action_expert.safetensors")))
    for skill in three.skills:
        policy = merged.instantiate(skill)
        assert policy.tensors.keys() == base_vlm.keys() | base_head.keys()
        assert all(torch.equal(policy.tensors[name], base_vlm[name]) for name in base_vlm)
        assert all(torch.equal(policy.tensors[name], base_head[name]) for name in base_head)
        assert policy.norm_stats == three.base.norm_stats()
    assert not torch.equal(merged.instantiate("skill_0").tensors[W], base_vlm[W] + full(T1))


def test_dare_ties_without_drops_is_ties_elect_and_disjoint_mean(three, tmp_path):
    # No drop, no trim: sums [[0,-2],[0,0.5],[1.5,2],[0,-0.5]] elect the signs (a zero sum keeps nothing);
    # disjoint means of the agreeing entries: (0,1) (-2-1)/2, (1,1) 0.5, (2,0) (2+0.5)/2, (2,1) (4+1)/2,
    # (3,1) -2.
    _, weight, base = merged_q_proj("dare_ties", three, tmp_path, drop_fraction=0.0, keep_fraction=1.0)
    assert torch.equal(weight, base + full(torch.tensor([[0.0, -1.5], [0.0, 0.5], [1.25, 2.5], [0.0, -2.0]])))


def test_dare_ties_of_one_expert_drops_or_doubles_each_entry(tmp_path, builders):
    one = builders.build_q_proj_set(tmp_path / "one", [T1])
    _, weight, base = merged_q_proj("dare_ties", one, tmp_path, drop_fraction=0.5, keep_fraction=1.0)
    dropped, doubled = weight == base, weight == base + 2 * full(T1)  # TIES of one expert is that expert
    assert bool((dropped | doubled).all())
    assert bool(dropped[full(T1) != 0].any()) and bool(doubled[full(T1) != 0].any())


def test_consensus_ties_by_hand(three, tmp_path):
    # TIES without trim, disjoint sum: tau_MTL = [[0,-3],[0,0.5],[2.5,5],[0,-2]]. TALL masks at lambda 0.2,
    # |T_t| > 0.2 |tau_MTL - T_t|: votes (0,1) 3, (1,1) 1 (only T2), (2,0) 3, (2,1) 3, (3,1) 2 (T2, T3);
    # kept where >= 2, so only (1,1) is dropped.
    merged, weight, base = merged_q_proj(
        "consensus_ties", three, tmp_path, keep_fraction=1.0, mask_strength=0.2, min_agreement=2
    )
    assert torch.equal(weight, base + full(torch.tensor([[0.0, -3.0], [0.0, 0.0], [2.5, 5.0], [0.0, -2.0]])))
    _, selfish_kept, _ = merged_q_proj(
        "consensus_ties", three, tmp_path / "k1", keep_fraction=1.0, mask_strength=0.2, min_agreement=1
    )
    assert torch.equal(
        selfish_kept, base + full(torch.tensor([[0.0, -3.0], [0.0, 0.5], [2.5, 5.0], [0.0, -2.0]]))
    )


def test_robustmerge_paper_is_the_papers_formula_by_hand(tmp_path, builders):
    # RobustMerge (arXiv:2502.17159), merged update: Delta W = lambda (sum_n B~_n S~_n)(sum_n A~_n),
    # S~_n = S_n / sum_m S_m, S_n = diag(||A_n row||_1 / ||A~_n row||_1), lambda = 2 (the paper's default).
    # Keeping 50% of each factor's entries prunes only A1's 0.5: S_1 = diag(1, 1.1), S_2 = diag(1, 1), so
    # S~_1 = diag(1/2, 1.1/2.1), S~_2 = diag(1/2, 1/2.1); sum_n A~_n = [[4,1,2,1],[3.5,2,0,4]].
    experts = builders.build_q_proj_set(tmp_path / "rm", [torch.zeros(4, 2), torch.zeros(4, 2)])
    for index, (a, b) in enumerate([(A1, B1), (A2, B2)]):
        path = experts.experts[index].file("lora.safetensors")
        factors = load_file(str(path))
        factors[Q_PROJ + ".lora_A"], factors[Q_PROJ + ".lora_B"] = a, b
        save_file(factors, str(path))
    sum_a = torch.tensor([[4.0, 1.0, 2.0, 1.0], [3.5, 2.0, 0.0, 4.0]])
    sum_bs = torch.tensor([[0.5, 1 / 2.1], [1.0, 2.2 / 2.1], [1.5, 0.0], [0.5, 4.55 / 2.1]])
    _, weight, base = merged_q_proj("robustmerge_paper", experts, tmp_path, keep_fraction=0.5)
    lora_scale = 2.0  # alpha / rank of the test experts
    torch.testing.assert_close(weight, base + 2.0 * lora_scale * sum_bs @ sum_a)
