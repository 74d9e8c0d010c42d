"""A crafted or mislabelled ``.safetensors`` file is one clear error naming the file, not a raw exception."""

from __future__ import annotations

import io
import json
import pickle
import re
import struct

import pytest
import torch

from vlamergebench.merge_methods.io import MergeInputError, TensorFile


def _safetensors(header, data=b""):
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _torch_save(obj, zip_format):
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return buffer.getvalue()


ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps({"w": [1.0, 2.0]}), "is not a safetensors file"),
        (_torch_save({"w": torch.ones(2)}, zip_format=False), "is not a safetensors file"),
        (_torch_save({"w": torch.ones(2)}, zip_format=True), "is not a safetensors file"),
        (_safetensors([1, 2]), "is not a safetensors file"),
        (
            _safetensors({"w": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
            "tensor 'w' has unsupported dtype None",
        ),
        (_safetensors({"w": {**ENTRY, "shape": "2"}}, bytes(8)), "tensor 'w': malformed header"),
        (_safetensors({"w": {**ENTRY, "data_offsets": [8, 0]}}, bytes(8)), "tensor 'w': malformed header"),
        (_safetensors({"w": {**ENTRY, "data_offsets": None}}, bytes(8)), "tensor 'w': malformed header"),
        (_safetensors({"w": 5}, bytes(8)), "tensor 'w': malformed header"),
        (
            _safetensors({"w": {**ENTRY, "shape": [3]}}, bytes(8)),
            "holds 8 bytes; dtype F32 and shape [3] need 12",
        ),
        (_safetensors({"__metadata__": [1]}, b""), "malformed header: __metadata__"),
    ],
)
def test_a_hostile_safetensors_file_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "lora.safetensors"
    path.write_bytes(content)
    with pytest.raises(MergeInputError, match=re.escape(message)) as caught:
        TensorFile(path, "expert 'x'")
    assert str(caught.value).startswith(f"expert 'x': {path}") and "\n" not in str(caught.value)


def test_a_well_formed_file_still_reads(tmp_path):
    path = tmp_path / "ok.safetensors"
    path.write_bytes(_safetensors({"w": ENTRY}, struct.pack("<2f", 1.0, 2.0)))
    assert TensorFile(path, "base").read("w").tolist() == [1.0, 2.0]


@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        (
            "expert_set.json",
            {"experts": 5},
            "field 'experts' must be a non-empty list of directory names, got 5",
        ),
        ("expert_set.json", {"experts": [3]}, "field 'experts' must be a non-empty list of directory names"),
        ("expert_set.json", {"base": 7}, "field 'base' must be a directory name, got 7"),
        ("expert_set.json", {"name": ["x"]}, "field 'name' must be text, got ['x']"),
        (
            "expert0/config.json",
            {"skill": {"suite": "s"}},
            "field 'skill' must be an object with a text 'name'",
        ),
        (
            "expert0/config.json",
            {"lora": {"rank": 0, "alpha": 16.0, "targets": "all-linear"}},
            "field 'lora' must hold an integer rank >= 1 and a finite alpha",
        ),
        ("expert0/config.json", {"skill": "s"}, "field 'skill' must be an object with a text 'name'"),
    ],
)
def test_a_malformed_expert_set_is_one_line_naming_file_and_field(
    builders, tmp_path, capsys, file, edit, message
):
    from vlamergebench.cli import main

    experts = builders.build_set(tmp_path / "set", count=2)
    path = experts.path / file
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    status = main(["merge", "--method", "ta", "--experts", str(experts.path), "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert err.startswith(f"vlamergebench merge: error: {path}: {message}"), err
