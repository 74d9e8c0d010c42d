"""Dense experts (full fine-tunes: ``dense.safetensors``, no LoRA): every method merges them or refuses them.

A method whose formula works on task vectors merges a dense expert's ``W_ft - W_0`` (all tensors, matrices
and not); one whose formula or state is the LoRA factors themselves refuses before writing anything, in one
line naming the expert, what it found and what it needs.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from vlamergebench.merge_methods.check import check_method
from vlamergebench.merge_methods.io import MergeInputError
from vlamergebench.merge_methods.registry import METHODS, make_method
from vlamergebench.policies.checkpoint import ACTION_EXPERT_FILE, DENSE_FILE, VLM_FILE, write_expert_set

torch.set_num_threads(1)

LORA_ONLY = {"lora_bank", "robustmerge", "robustmerge_paper", "core_space", "ta_own_vlm", "mergevla_own_vlm"}


def test_exactly_the_factor_methods_declare_they_need_lora():
    needing = {name for name in METHODS.names() if make_method(name).needs_lora_factors}
    assert needing == LORA_ONLY


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_merges_dense_experts_or_refuses_in_one_line(name, dense_set, tmp_path):
    if name in LORA_ONLY:
        with pytest.raises(MergeInputError) as caught:
            make_method(name).merge(dense_set, tmp_path / name, progress=False)
        message = str(caught.value)
        assert "\n" not in message
        assert "expert 'skill_0'" in message and str(dense_set.experts[0].path) in message
        assert f"found a dense task vector ({DENSE_FILE}" in message
        assert f"merge method {name!r} needs LoRA factors (lora.safetensors" in message
        assert not (tmp_path / name).exists()
        return
    merged = check_method(name, dense_set, tmp_path)
    assert merged.skills == dense_set.skills


def test_task_arithmetic_of_dense_experts_is_the_base_plus_lambda_times_the_summed_deltas(
    dense_set, tmp_path
):
    merged = make_method("ta", scale=0.3).merge(dense_set, tmp_path / "ta", progress=False)
    base = load_file(str(dense_set.base.file(VLM_FILE)))
    experts = [load_file(str(expert.file(DENSE_FILE))) for expert in dense_set.experts]
    tensors = merged.instantiate("skill_1").tensors
    for name, weight in base.items():  # by hand: W_0 + 0.3 * sum_t (W_t - W_0)
        expected = weight + 0.3 * sum(expert[name] - weight for expert in experts)
        torch.testing.assert_close(tensors[name], expected, rtol=0, atol=1e-6)
        assert not torch.equal(tensors[name], weight), name  # every tensor moved, 1-D ones too
    heads = [load_file(str(expert.file(ACTION_EXPERT_FILE))) for expert in dense_set.experts]
    for name in heads[0]:
        torch.testing.assert_close(tensors[name], sum(head[name] for head in heads) / 3)


def test_a_set_mixing_lora_and_dense_experts_sums_each_exact_task_vector(builders, tmp_path):
    base = builders.write_base(tmp_path / "base")
    lora = builders.write_expert(tmp_path / "lora", base, "lora_skill", 0)
    dense = builders.write_dense_expert(tmp_path / "dense", base, "dense_skill", 1)
    experts = write_expert_set(tmp_path / "set", "mixed", base, [lora, dense])
    merged = make_method("ta").merge(experts, tmp_path / "ta", progress=False).instantiate("lora_skill")
    base_vlm = load_file(str(base / VLM_FILE))
    factors, folded = load_file(str(lora / "lora.safetensors")), load_file(str(dense / DENSE_FILE))
    scale = experts.experts[0].lora_scale
    for name, weight in base_vlm.items():
        module = name.removesuffix(".weight")
        lora_tau = (
            scale * factors[module + ".lora_B"] @ factors[module + ".lora_A"]
            if module + ".lora_A" in factors
            else torch.zeros_like(weight)
        )
        expected = weight + lora_tau + (folded[name] - weight)
        torch.testing.assert_close(merged.tensors[name], expected, rtol=0, atol=1e-5)
    with pytest.raises(MergeInputError, match="expert 'dense_skill'.*needs LoRA factors"):
        make_method("lora_bank").merge(experts, tmp_path / "bank", progress=False)
