"""TSV, Iso, WUDI, KnOTS, Core Space, EMR, LiNeS: hand-computed cases and the invariants their papers state.

The q_proj sets give each expert the task vector ``[block | 0]`` on q_proj only (4 x 4), as in
``test_methods.py``; the pure formulas are also checked on small matrices built here.
"""

from __future__ import annotations

import pytest
import torch
from qproj import T1, T2, T3, W, full
from safetensors.torch import load_file

from vlamergebench.merge_methods import ops
from vlamergebench.merge_methods.core_space import core_matrices, reference_bases
from vlamergebench.merge_methods.io import MergeInputError
from vlamergebench.merge_methods.iso import (
    common_space_size,
    iso_c,
    iso_c_from_factors,
    iso_c_support,
    iso_cts,
    orthonormal_complement,
)
from vlamergebench.merge_methods.lines import block_depths
from vlamergebench.merge_methods.lowrank import LowRank, concatenated, dense_factors, thin_svd
from vlamergebench.merge_methods.registry import make_method
from vlamergebench.merge_methods.tsv import tsv_merge
from vlamergebench.merge_methods.wudi import wudi_loss, wudi_merge

torch.set_num_threads(1)


def random_lowrank(generator: torch.Generator, rows: int, cols: int, rank: int) -> LowRank:
    return LowRank(torch.randn(rows, rank, generator=generator), torch.randn(rank, cols, generator=generator))


def merged_delta(name, experts, tmp_path, skill="skill_0", **overrides):
    """(merged model, the q_proj delta of ``skill`` against the base)."""
    merged = make_method(name, **overrides).merge(experts, tmp_path / name, progress=False)
    base = load_file(str(experts.base.file("vlm.safetensors")))[W]
    return merged, merged.instantiate(skill).tensors[W] - base


# ---- exact factors ---------------------------------------------------------------------------------------


def test_thin_svd_from_factors_matches_the_dense_svd():
    generator = torch.Generator().manual_seed(0)
    task = random_lowrank(generator, 7, 5, 2)
    u, s, v = thin_svd(task)
    assert s.shape == (2,)  # rank 2: the numerically zero directions are dropped
    torch.testing.assert_close(s.float(), torch.linalg.svdvals(task.dense())[:2])
    torch.testing.assert_close((u * s @ v.T).float(), task.dense(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(u.T @ u, torch.eye(2, dtype=torch.float64))
    assert dense_factors(task.dense()).left.shape == (7, 2)


# ---- TSV -------------------------------------------------------------------------------------------------


def test_tsv_of_tasks_on_orthogonal_subspaces_is_their_sum():
    # rows/cols {0, 1} and {2, 3}: the concatenated singular vectors are already orthonormal
    first = torch.zeros(4, 4)
    first[:2, :2] = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
    second = torch.zeros(4, 4)
    second[2:, 2:] = torch.tensor([[-1.0, 0.0], [4.0, 1.0]])
    merged = tsv_merge([dense_factors(first), dense_factors(second)])
    torch.testing.assert_close(merged, first + second, atol=1e-5, rtol=0)


def test_tsv_merged_matrix_has_the_kept_singular_values_on_orthogonal_directions():
    generator = torch.Generator().manual_seed(1)
    tasks = [random_lowrank(generator, 9, 7, 3) for _ in range(3)]  # k = floor(7 / 3) = 2 triplets each
    kept = torch.cat([torch.linalg.svdvals(task.dense())[:2] for task in tasks])
    merged = tsv_merge(tasks)
    torch.testing.assert_close(
        torch.linalg.svdvals(merged)[:6], kept.sort(descending=True).values, atol=1e-4, rtol=1e-4
    )
    assert torch.linalg.matrix_rank(merged) == 6


def test_tsv_on_the_written_model(three, tmp_path):
    # T = 3 on 4 x 4: one triplet per task; the merged delta's spectrum is the three top singular values
    _, delta = merged_delta("tsv", three, tmp_path)
    top = torch.stack([torch.linalg.svdvals(t)[0] for t in (T1, T2, T3)]).sort(descending=True).values
    torch.testing.assert_close(torch.linalg.svdvals(delta)[:3], top, atol=1e-4, rtol=1e-5)
    _, half = merged_delta("tsv", three, tmp_path / "half", alpha=0.5)
    torch.testing.assert_close(half, 0.5 * delta, atol=1e-5, rtol=1e-5)


def test_tsv_of_one_expert_is_the_expert(tmp_path, builders):
    one = builders.build_set(tmp_path / "one", count=1)
    tsv = make_method("tsv").merge(one, tmp_path / "tsv", progress=False).instantiate("skill_0").tensors
    bank = make_method("expert_bank").merge(one, tmp_path / "bank", progress=False).instantiate("skill_0")
    for name, tensor in bank.tensors.items():
        torch.testing.assert_close(tsv[name], tensor, atol=1e-5, rtol=1e-5)


def test_tsv_c_keeps_each_tasks_top_triplets(three, two, tmp_path):
    merged, delta = merged_delta("tsv_c", three, tmp_path, skill="skill_1")  # k = 1 of rank-2 T2
    u, s, vh = torch.linalg.svd(full(T2))
    torch.testing.assert_close(delta, s[0] * torch.outer(u[:, 0], vh[0]), atol=1e-5, rtol=1e-5)
    assert merged.state["kept_triplets"] == {"skill_0": 1, "skill_1": 1, "skill_2": 1}
    _, lossless = merged_delta("tsv_c", two, tmp_path / "two")  # k = 2 >= rank: the expert itself
    torch.testing.assert_close(lossless, full(T1), atol=1e-5, rtol=1e-5)
    assert "skill" in merged.storage.by_component()


# ---- Iso-C / Iso-CTS -------------------------------------------------------------------------------------


def test_iso_c_by_hand():
    # M = diag(2, 0) + diag(1, 1) = diag(3, 1): mean singular value 2, U V^T = I
    merged = iso_c(torch.diag(torch.tensor([2.0, 0.0])) + torch.diag(torch.tensor([1.0, 1.0])))
    torch.testing.assert_close(merged, 2.0 * torch.eye(2))


def test_iso_c_spectrum_is_flat(three, tmp_path):
    generator = torch.Generator().manual_seed(2)
    summed = torch.randn(6, 5, generator=generator)
    flat = torch.linalg.svdvals(iso_c(summed))
    torch.testing.assert_close(flat, torch.full((5,), float(torch.linalg.svdvals(summed).mean())))
    # "support": flat over the rank of M only; the written model agrees with the pure formula
    total = full(T1 + T2 + T3)
    singular = torch.linalg.svdvals(total)[:2]
    _, delta = merged_delta("iso_c", three, tmp_path, spectrum="support")
    torch.testing.assert_close(
        torch.linalg.svdvals(delta),
        torch.tensor([*[float(singular.mean())] * 2, 0.0, 0.0]),
        atol=1e-5,
        rtol=0,
    )
    # "full" (the code): all four singular values equal mean(S) of M, zeros included
    _, code = merged_delta("iso_c", three, tmp_path / "full")
    expected = float(torch.linalg.svdvals(total).sum() / 4)
    torch.testing.assert_close(torch.linalg.svdvals(code), torch.full((4,), expected), atol=1e-5, rtol=0)
    assert iso_c_support([LowRank(torch.zeros(3, 0), torch.zeros(0, 2))]).abs().sum() == 0


@pytest.mark.parametrize("shape", [(12, 7), (7, 12), (9, 9)])
def test_iso_c_from_factors_is_the_full_svd_form_up_to_the_arbitrary_completion(shape):
    rows, cols = shape
    generator = torch.Generator().manual_seed(5)
    factors = [
        LowRank(torch.randn(rows, 2, generator=generator), torch.randn(2, cols, generator=generator))
        for _ in range(2)
    ]
    summed = concatenated(factors).dense()
    merged, dense = iso_c_from_factors(factors).double(), iso_c(summed).double()
    # every one of the min(m, n) singular values is mean(S) of M, zeros included (the code's "full")
    expected = float(torch.linalg.svdvals(summed.double()).sum()) / min(shape)
    torch.testing.assert_close(
        torch.linalg.svdvals(merged),
        torch.full((min(shape),), expected, dtype=torch.float64),
        atol=1e-5,
        rtol=0,
    )
    # on M's support both forms agree; they differ only in the (arbitrary) completion
    u, _, v = thin_svd(concatenated(factors))
    torch.testing.assert_close(u.T @ merged @ v, u.T @ dense @ v, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        u.T @ merged @ v, expected * torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0
    )
    complement = orthonormal_complement(u, min(shape) - 4)
    torch.testing.assert_close(
        u.T @ complement, torch.zeros(4, min(shape) - 4, dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(complement.T @ complement, torch.eye(min(shape) - 4, dtype=torch.float64))
    zero = LowRank(torch.zeros(rows, 2), torch.zeros(2, cols))
    assert iso_c_from_factors([zero]).abs().sum() == 0


def test_iso_cts_common_space_and_flatness():
    assert common_space_size(10, 12, 3, 0.8) == 7  # floor(8) -> remainder 2 rounds to 3 -> 10 - 3
    assert common_space_size(4, 4, 3, 0.8) == 4
    generator = torch.Generator().manual_seed(3)
    taus = [torch.randn(10, 12, generator=generator) for _ in range(3)]
    merged = iso_cts(taus, 0.8)
    spectrum = torch.linalg.svdvals(merged)
    torch.testing.assert_close(spectrum, spectrum.mean().expand(10), atol=1e-4, rtol=1e-4)
    # with the whole space common, Iso-CTS is Iso-C
    torch.testing.assert_close(iso_cts(taus, 1.0), iso_c(sum(taus)), atol=1e-4, rtol=1e-4)


# ---- WUDI ------------------------------------------------------------------------------------------------


def reference_wudi(taus, iterations, step_size):
    """The code's loop: Parameter at the sum, Adam on the dense loss through autograd."""
    merged = torch.nn.Parameter(torch.stack(taus).sum(dim=0).double())
    optimizer = torch.optim.Adam([merged], lr=step_size, weight_decay=0)
    for _ in range(iterations):
        loss = wudi_loss(merged, [tau.double() for tau in taus])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return merged.detach().float()


def test_wudi_matches_autograd_on_the_codes_loss():
    generator = torch.Generator().manual_seed(4)
    tasks = [random_lowrank(generator, 6, 5, 2) for _ in range(3)]
    ours = wudi_merge(tasks, iterations=25, step_size=1e-2)
    torch.testing.assert_close(ours, reference_wudi([t.dense() for t in tasks], 25, 1e-2), atol=2e-4, rtol=0)
    start = sum(t.dense() for t in tasks)
    assert wudi_loss(ours, [t.dense() for t in tasks]) < wudi_loss(start, [t.dense() for t in tasks])
    torch.testing.assert_close(wudi_merge(tasks, 0, 1e-2), start)  # no steps: Task Arithmetic


def test_wudi_written_model_and_zero_tasks(three, tmp_path):
    _, delta = merged_delta("wudi", three, tmp_path, iterations=10, step_size=1e-2)
    torch.testing.assert_close(
        delta, reference_wudi([full(t) for t in (T1, T2, T3)], 10, 1e-2), atol=2e-4, rtol=0
    )
    zero = LowRank(torch.zeros(4, 0), torch.zeros(0, 4))  # an expert without this target adds no term
    tasks = [dense_factors(full(T1)), zero]
    torch.testing.assert_close(
        wudi_merge(tasks, 5, 1e-2), reference_wudi([full(T1)], 5, 1e-2), atol=1e-5, rtol=0
    )


# ---- KnOTS -----------------------------------------------------------------------------------------------


def test_knots_against_a_dense_joint_svd(three, tmp_path):
    _, delta = merged_delta("knots", three, tmp_path, scale=1.0)
    taus = [full(t).double() for t in (T1, T2, T3)]
    u, s, _ = torch.linalg.svd(torch.cat(taus, dim=1), full_matrices=False)
    basis = u[:, s > 1e-5]
    reps = torch.stack([basis.T @ tau for tau in taus])
    expected = basis @ ops.disjoint_merge(reps, ops.elect_sign(reps), "mean")
    torch.testing.assert_close(delta, expected.float(), atol=1e-5, rtol=1e-5)
    _, scaled = merged_delta("knots", three, tmp_path / "default")  # scale 0.5 by default
    torch.testing.assert_close(scaled, 0.5 * delta, atol=1e-5, rtol=1e-5)


def test_knots_of_one_expert_is_the_expert(tmp_path, builders):
    one = builders.build_q_proj_set(tmp_path / "one", [T2])
    _, delta = merged_delta("knots", one, tmp_path, scale=1.0)
    torch.testing.assert_close(delta, full(T2), atol=1e-5, rtol=1e-5)


# ---- Core Space ------------------------------------------------------------------------------------------


def test_core_space_projection_is_lossless():
    generator = torch.Generator().manual_seed(5)
    tasks = [random_lowrank(generator, 8, 6, 2) for _ in range(3)]
    u_b, v_a = reference_bases(tasks)
    for task, core in zip(tasks, core_matrices(tasks, u_b, v_a), strict=True):
        assert core.shape == (6, 6)
        torch.testing.assert_close((u_b @ core @ v_a.T).float(), task.dense(), atol=1e-5, rtol=1e-5)


def test_core_space_ta_is_plain_lora_addition(hand_set, tmp_path):
    core = make_method("core_space", merge="ta").merge(hand_set, tmp_path / "core", progress=False)
    ta = make_method("ta").merge(hand_set, tmp_path / "ta", progress=False)
    ours, reference = core.instantiate("skill_0").tensors, ta.instantiate("skill_0").tensors
    for name, tensor in reference.items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-5, rtol=1e-5)


def test_core_space_tsv_and_ties_run_in_the_core(three, tmp_path):
    _, tsv = merged_delta("core_space", three, tmp_path)
    _, dense_tsv = merged_delta("tsv", three, tmp_path / "tsv")
    torch.testing.assert_close(
        torch.linalg.svdvals(tsv), torch.linalg.svdvals(dense_tsv), atol=1e-4, rtol=1e-4
    )
    _, ties = merged_delta("core_space", three, tmp_path / "ties", merge="ties", keep_fraction=1.0)
    assert ties.abs().sum() > 0 and torch.all(
        ties[:, 2:] == 0
    )  # still inside span(A): columns 2, 3 untouched


# ---- EMR -------------------------------------------------------------------------------------------------


def test_emr_by_hand(three, tmp_path):
    # sigma = sign of the sum with -1 at 0: [[-,-],[-,+],[+,+],[-,-]]; agreeing entries give the masks
    # M1 = [[0,1],[0,0],[0,1],[0,0]], M2 = [[1,1],[0,1],[1,0],[0,0]], M3 = [[0,0],[1,0],[1,1],[0,1]],
    # tau_uni = sigma * max agreeing |tau| = [[-2,-2],[-4,0.5],[2,4],[0,-2]];
    # lambda_t = sum|tau_t| / sum|M_t tau_uni| = 11.5 / 6, 10.5 / 6.5, 9.5 / 12
    tau_uni = torch.tensor([[-2.0, -2.0], [-4.0, 0.5], [2.0, 4.0], [0.0, -2.0]])
    masks = [
        torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 1.0], [0.0, 0.0]]),
        torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]),
        torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]),
    ]
    scales = [11.5 / 6, 10.5 / 6.5, 9.5 / 12]
    merged = make_method("emr").merge(three, tmp_path / "emr", progress=False)
    base = load_file(str(three.base.file("vlm.safetensors")))[W]
    assert merged.state["rescalers"] == pytest.approx(dict(zip(three.skills, scales, strict=True)))
    for skill, mask, scale in zip(three.skills, masks, scales, strict=True):
        expected = base + scale * full(mask * tau_uni)
        torch.testing.assert_close(merged.instantiate(skill).tensors[W], expected)
    packed = merged.tensor_file("skills/00/masks.safetensors").read(W)
    assert packed.numel() == 2  # 16 entries at one bit


def test_emr_of_one_expert_is_the_expert(tmp_path, builders):
    one = builders.build_q_proj_set(tmp_path / "one", [T1])
    merged, delta = merged_delta("emr", one, tmp_path)
    assert merged.state["rescalers"] == {"skill_0": 1.0}
    torch.testing.assert_close(delta, full(T1))


# ---- LiNeS -----------------------------------------------------------------------------------------------


def test_lines_block_depths():
    names = [f"llm.layers.{i}.mlp.down_proj.weight" for i in range(4)]
    names += ["vision.featurizer.blocks.0.attn.qkv.weight", "vision.featurizer.blocks.1.attn.qkv.weight"]
    names += ["projector.fc1.weight", "llm.embed_tokens.weight"]
    depths = block_depths(names)
    assert [depths[n] for n in names[:4]] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert [depths[n] for n in names[4:6]] == [0.0, 1.0]
    assert "projector.fc1.weight" not in depths and "llm.embed_tokens.weight" not in depths


def test_lines_on_ta_and_ties_by_hand(three, tmp_path):
    # one block per stack here, so lambda = alpha: 1/3 for TA
    merged, delta = merged_delta("lines_ta", three, tmp_path)
    torch.testing.assert_close(delta, full(T1 + T2 + T3) / 3)
    assert merged.state["alpha"] == pytest.approx(1 / 3)
    # TIES keeping 4 per expert: [[0,-1.5],[0,0],[2,2.5],[0,-2]] (test_methods.py), L1 8; the sum's L1 6.5
    merged, delta = merged_delta("lines_ties", three, tmp_path / "ties", keep_fraction=4.5 / 88)
    alpha = 6.5 / 8 / 3
    assert merged.state["alpha"] == pytest.approx(alpha)
    ties = torch.tensor([[0.0, -1.5], [0.0, 0.0], [2.0, 2.5], [0.0, -2.0]])
    torch.testing.assert_close(delta, alpha * full(ties))


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tsv", "iso_c", "wudi", "knots", "core_space", "emr", "lines_ta"])
def test_non_finite_factor_names_expert_and_tensor(tmp_path, builders, method):
    lora_b = "llm.layers.0.mlp.down_proj.lora_B"

    def poison(files):
        files["lora.safetensors"][lora_b] = files["lora.safetensors"][lora_b].clone()
        files["lora.safetensors"][lora_b][1, 0] = float("nan")

    base = builders.write_base(tmp_path / "base")
    good = builders.write_expert(tmp_path / "good", base, "good", 0)
    bad = builders.write_expert(tmp_path / "bad", base, "bad", 1, edit=poison)
    from vlamergebench.policies.checkpoint import write_expert_set

    experts = write_expert_set(tmp_path, "bad-set", base, [good, bad])
    with pytest.raises(MergeInputError) as caught:
        make_method(method).merge(experts, tmp_path / "out", progress=False)
    assert "expert 'bad'" in str(caught.value) and lora_b in str(caught.value), str(caught.value)
    assert not (tmp_path / "out").exists()


# ---- MergeVLA's table as variants ------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "standalone"), [("tsv", "tsv"), ("wudi", "wudi"), ("knots", "knots")])
def test_mergevla_variants_mask_the_standalone_merge(three, tmp_path, variant, standalone):
    merged = make_method(f"mergevla_{variant}").merge(three, tmp_path / variant, progress=False)
    tau_merge = merged.tensor_file("tau_merge.safetensors").read(W)
    _, reference = merged_delta(standalone, three, tmp_path / "alone")
    torch.testing.assert_close(tau_merge, reference, atol=1e-5, rtol=1e-5)
    base = load_file(str(three.base.file("vlm.safetensors")))[W]
    for index, (skill, block) in enumerate(zip(three.skills, (T1, T2, T3), strict=True)):
        mask = ops.tall_mask(full(block), tau_merge, 0.6)
        stored = ops.unpack_bits(merged.tensor_file(f"skills/{index:02d}/masks.safetensors").read(W), (4, 4))
        assert torch.equal(stored, mask)
        torch.testing.assert_close(merged.instantiate(skill).tensors[W], base + mask * tau_merge)
    assert merged.state["rescalers"] == dict.fromkeys(three.skills, 1.0)


def test_mergevla_emr_uses_emr_masks_and_rescalers(three, tmp_path):
    merged = make_method("mergevla_emr").merge(three, tmp_path / "mv", progress=False)
    emr = make_method("emr").merge(three, tmp_path / "emr", progress=False)
    assert merged.state["rescalers"] == pytest.approx(emr.state["rescalers"])
    assert torch.equal(
        merged.tensor_file("tau_merge.safetensors").read(W), emr.tensor_file("tau_uni.safetensors").read(W)
    )
    for skill in three.skills:
        torch.testing.assert_close(merged.instantiate(skill).tensors[W], emr.instantiate(skill).tensors[W])


# ---- dare_ties: the reduce knob --------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["mean", "sum"])
def test_dare_ties_reduce_matches_ties_without_drops(three, tmp_path, reduce):
    settings = {"keep_fraction": 0.25, "reduce": reduce}
    _, dare = merged_delta("dare_ties", three, tmp_path / "dare", drop_fraction=0.0, **settings)
    _, ties = merged_delta("ties_per_tensor", three, tmp_path / "ties", **settings)
    assert torch.equal(dare, ties)
    if reduce == "sum":  # the disjoint sum of the kept, agreeing entries (test_methods.py's TIES sum case)
        torch.testing.assert_close(
            dare, full(torch.tensor([[0.0, -3.0], [0.0, 0.0], [2.0, 5.0], [0.0, -2.0]]))
        )


# ---- Twin-Merging ----------------------------------------------------------------------------------------


def test_twin_merging_shared_expert_and_twins(two, tmp_path):
    base = load_file(str(two.base.file("vlm.safetensors")))[W]
    shared = 0.29 * full(T1 + T2)
    # keep floor(0.5 * 4) = 2 directions: covers the rank of tau_t - tau* (2 here): each skill is its expert
    merged = make_method("twin_merging", mask_rate=0.5).merge(two, tmp_path / "lossless", progress=False)
    torch.testing.assert_close(merged.tensor_file("vlm.safetensors").read(W), base + shared)
    for skill, block in zip(two.skills, (T1, T2), strict=True):
        torch.testing.assert_close(
            merged.instantiate(skill).tensors[W], base + full(block), atol=1e-5, rtol=0
        )
    # keep 1: the twin is the rank-1 truncation of tau_t - tau*
    merged = make_method("twin_merging", mask_rate=0.75).merge(two, tmp_path / "rank1", progress=False)
    u, s, vh = torch.linalg.svd(full(T2) - shared)
    expected = base + shared + s[0] * torch.outer(u[:, 0], vh[0])
    torch.testing.assert_close(merged.instantiate("skill_1").tensors[W], expected, atol=1e-5, rtol=0)
    heads = load_file(str(two.experts[1].file("action_expert.safetensors")))
    tensors = merged.instantiate("skill_1").tensors
    assert all(torch.equal(tensors[name], tensor) for name, tensor in heads.items())  # its own action expert
