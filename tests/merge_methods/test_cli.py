"""``vlamergebench merge``: parses, validates and calls the library; errors are one line, exit status 2."""

from __future__ import annotations

import torch

from vlamergebench.cli import main
from vlamergebench.merge_methods.merged import MergedModel

torch.set_num_threads(1)


def test_merge_command_writes_the_model_with_overrides(hand_set, tmp_path, capsys):
    out = tmp_path / "ties"
    status = main(["merge", "--method", "ties_per_tensor", "--experts", str(hand_set.path), "--out", str(out),
                   "--set", "keep_fraction=0.5", "--set", "reduce=sum", "--no-progress"])  # fmt: skip
    assert status == 0
    merged = MergedModel(out)
    assert merged.config == {"keep_fraction": 0.5, "topk_scope": "per_tensor", "reduce": "sum", "scale": 1.0,
                             "task_vectors": "lora"}  # fmt: skip
    printed = capsys.readouterr().out
    assert "ties_per_tensor" in printed and "% of the dense expert bank" in printed


def test_merge_command_snapshots_a_continual_method(hand_set, tmp_path):
    out, steps = str(tmp_path / "c"), str(tmp_path / "steps")
    status = main(["merge", "--method", "carve", "--experts", str(hand_set.path), "--out", out,
                   "--snapshots", steps, "--no-progress"])  # fmt: skip
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "steps").iterdir()) == ["01", "02", "03"]


def test_merge_command_errors(hand_set, tmp_path, capsys):
    common = ["--experts", str(hand_set.path), "--out", str(tmp_path / "x"), "--no-progress"]
    assert main(["merge", "--method", "nope", *common]) == 2
    assert "unknown merge method 'nope'; registered:" in capsys.readouterr().err
    assert main(["merge", "--method", "ta", "--set", "lamda=1", *common]) == 2
    assert "unknown field(s) ['lamda']" in capsys.readouterr().err
    assert main(["merge", "--method", "ta", "--set", "scale", *common]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["merge", "--method", "ta", "--snapshots", str(tmp_path / "s"), *common]) == 2
    assert "continual" in capsys.readouterr().err
    assert main(["merge", "--method", "ta", "--experts", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "expert_set.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
