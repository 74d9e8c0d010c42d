"""Bad input: each a clear error naming the expert and the tensor, and no output left looking complete."""

from __future__ import annotations

import pytest
import torch

from vlamergebench.configs import ConfigError
from vlamergebench.merge_methods.io import MergeInputError, StreamingSafetensorsWriter, TensorFile
from vlamergebench.merge_methods.merged import MergedModel
from vlamergebench.merge_methods.registry import make_method
from vlamergebench.policies.checkpoint import CheckpointError, write_expert_set

torch.set_num_threads(1)
HEAD = "action_head.blocks.0.v_task.weight"
LORA_A = "llm.layers.0.mlp.down_proj.lora_A"
LORA_B = "llm.layers.0.mlp.down_proj.lora_B"


def set_with_bad_expert(root, builders, edit=None, dtype=torch.float32):
    base = builders.write_base(root / "base")
    good = builders.write_expert(root / "good", base, "good", 0)
    bad = builders.write_expert(root / "bad", base, "bad", 1, edit=edit, dtype=dtype)
    return write_expert_set(root, "bad-set", base, [good, bad])


def assert_fails_cleanly(experts, tmp_path, method, *patterns):
    out = tmp_path / "out" / method
    with pytest.raises((MergeInputError, CheckpointError)) as caught:
        make_method(method).merge(experts, out, progress=False)
    for pattern in patterns:
        assert pattern in str(caught.value), str(caught.value)
    assert not out.exists()
    leftovers = list((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else []
    assert leftovers == [], leftovers  # no hidden partial directory either
    return str(caught.value)


def _drop(file_name, name):
    return lambda files: files[file_name].pop(name)


def _add(file_name, name, tensor):
    return lambda files: files[file_name].__setitem__(name, tensor)


@pytest.mark.parametrize("method", ["ta", "mergevla", "carve"])
def test_missing_tensor(tmp_path, builders, method):
    experts = set_with_bad_expert(tmp_path, builders, _drop("action_expert.safetensors", HEAD))
    assert_fails_cleanly(experts, tmp_path, method, "expert 'bad'", "missing", HEAD)


def test_extra_tensor(tmp_path, builders):
    extra = _add("action_expert.safetensors", "action_head.extra.weight", torch.zeros(2))
    experts = set_with_bad_expert(tmp_path, builders, extra)
    assert_fails_cleanly(experts, tmp_path, "ties", "expert 'bad'", "unexpected", "action_head.extra.weight")


def test_missing_lora_half_and_unknown_target(tmp_path, builders):
    experts = set_with_bad_expert(tmp_path, builders, _drop("lora.safetensors", LORA_B))
    assert_fails_cleanly(experts, tmp_path, "ta", "expert 'bad'", LORA_B, "missing")
    other = tmp_path / "other"
    experts = set_with_bad_expert(
        other,
        builders,
        lambda f: f["lora.safetensors"].update(
            {
                "llm.layers.9.mlp.up_proj.lora_A": torch.zeros(2, 4),
                "llm.layers.9.mlp.up_proj.lora_B": torch.zeros(4, 2),
            }
        ),
    )
    assert_fails_cleanly(experts, other, "ta", "expert 'bad'", "llm.layers.9.mlp.up_proj")


def test_shape_mismatch(tmp_path, builders):
    experts = set_with_bad_expert(tmp_path, builders, _add("lora.safetensors", LORA_A, torch.zeros(2, 5)))
    message = assert_fails_cleanly(experts, tmp_path, "ta", "expert 'bad'", LORA_A)
    assert "[2, 5]" in message and "[2, 8]" in message


def test_dtype_mismatch(tmp_path, builders):
    experts = set_with_bad_expert(tmp_path, builders, dtype=torch.bfloat16)
    message = assert_fails_cleanly(experts, tmp_path, "ta", "expert 'bad'", "action_head")
    assert "bfloat16" in message and "float32" in message


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", ["ta", "ties", "carve"])
def test_nan_or_inf(tmp_path, builders, value, method):
    def poison(files):
        files["lora.safetensors"][LORA_B] = files["lora.safetensors"][LORA_B].clone()
        files["lora.safetensors"][LORA_B][1, 0] = value

    experts = set_with_bad_expert(tmp_path, builders, poison)
    assert_fails_cleanly(experts, tmp_path, method, "expert 'bad'", LORA_B, "NaN/Inf")


def test_truncated_safetensors(tmp_path, builders):
    experts = set_with_bad_expert(tmp_path, builders)
    path = experts.experts[1].file("action_expert.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    message = assert_fails_cleanly(experts, tmp_path, "ta", "expert 'bad'", "truncated", str(path))
    assert "tensor '" in message  # names the tensor that lies past the end
    path.write_bytes(data[:6])
    assert_fails_cleanly(experts, tmp_path, "ta", "expert 'bad'", "truncated")


def test_experts_from_different_bases(tmp_path, builders):
    base = builders.write_base(tmp_path / "base")
    other = builders.write_base(tmp_path / "other", seed=5)
    good = builders.write_expert(tmp_path / "good", base, "good", 0)
    stranger = builders.write_expert(tmp_path / "stranger", other, "stranger", 1)
    with pytest.raises(CheckpointError, match="stranger.*base"):
        write_expert_set(tmp_path / "set", "mixed", base, [good, stranger])


def test_failed_merge_keeps_an_existing_output(tmp_path, builders):
    experts = set_with_bad_expert(tmp_path, builders, _drop("action_expert.safetensors", HEAD))
    good = builders.build_set(tmp_path / "good", count=2)
    out = tmp_path / "merged"
    make_method("ta").merge(good, out, progress=False)
    with pytest.raises(MergeInputError):
        make_method("ta").merge(experts, out, overwrite=True, progress=False)
    assert MergedModel(out).expert_set_id == good.id  # the old, complete model is untouched
    with pytest.raises(FileExistsError):
        make_method("ta").merge(good, out, progress=False)


def test_incomplete_directory_is_not_a_merged_model(tmp_path, hand_set):
    merged = make_method("ta").merge(hand_set, tmp_path / "m", progress=False)
    (merged.path / "merged.json").unlink()
    with pytest.raises(CheckpointError, match="not a \\(complete\\) merged model"):
        MergedModel(merged.path)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown field.*'lamda'.*known fields"):
        make_method("ta", lamda=0.3)
    with pytest.raises(ConfigError, match="keep_fraction must be in \\[0, 1\\]"):
        make_method("ties", keep_fraction=20)
    with pytest.raises(ConfigError, match="'scale' expects a number"):
        make_method("ta", scale="big")
    with pytest.raises(ConfigError, match="topk_scope must be one of"):
        make_method("ties", topk_scope="layer")
    with pytest.raises(KeyError, match="unknown merge method 'tie'; registered: .*ties"):
        make_method("tie")


def test_streaming_writer_refuses_out_of_order_and_short_files(tmp_path):
    specs = [("a", torch.float32, (2,)), ("b", torch.uint8, (3,))]
    writer = StreamingSafetensorsWriter(tmp_path / "x.safetensors", specs)
    with pytest.raises(ValueError, match="expected tensor 'a' next"):
        writer.write("b", torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="declared torch.float32"):
        writer.write("a", torch.zeros(3))
    with pytest.raises(ValueError, match="never written"):
        writer.close()
    with StreamingSafetensorsWriter(tmp_path / "y.safetensors", specs, {"k": "v"}) as good:
        good.write("a", torch.tensor([1.0, 2.0]))
        good.write("b", torch.tensor([1, 2, 3], dtype=torch.uint8))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "y.safetensors"), "pt") as handle:
        assert handle.metadata() == {"k": "v"}
        assert handle.get_tensor("a").tolist() == [1.0, 2.0] and handle.get_tensor("b").tolist() == [1, 2, 3]
    assert TensorFile(tmp_path / "y.safetensors", "test").names == ["a", "b"]
