"""Hostile or careless inputs to `vlamergebench run`: an expert set naming code as its env, bad numbers on the
command line. Each is refused with one line naming the file or flag, before any rollout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinyexperts import SKILLS, make_expert_set  # noqa: E402

from vlamergebench.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def payload_set(tmp_path_factory):
    """An expert set whose first skill names a module shipped in the set's own directory as its env."""
    root = tmp_path_factory.mktemp("hostile")
    skills = [{**SKILLS[0], "env_id": "vlamergebench_payload:Evil-v0"}]
    expert_set = make_expert_set(root, skills)
    marker = root / "payload_ran"
    (expert_set / "vlamergebench_payload.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    )
    return expert_set, marker


def test_an_env_id_from_config_json_never_imports_code(payload_set, tmp_path, monkeypatch, capsys):
    expert_set, marker = payload_set
    monkeypatch.syspath_prepend(str(expert_set))  # as `python -m vlamergebench.cli` run from the set's dir
    out = tmp_path / "o"
    args = ["run", "--method", "ta", "--experts", str(expert_set), "--out", str(out), "--workers", "1"]
    assert main([*args, "--episodes", "1", "--max-steps", "2", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "config.json: skill.env_id 'vlamergebench_payload:Evil-v0' is not a registered" in err
    assert not marker.exists()
    assert "vlamergebench_payload" not in sys.modules
    assert not (out / "results.sqlite").exists()


@pytest.mark.parametrize("command", [["run", "--method", "ta"], ["eval", "--policy", "mypolicy:make"]])
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--max-steps", "-5"),
        ("--max-steps", "0"),
        ("--workers", "0"),
        ("--image-size", "0"),
        ("--episodes", "0"),
        ("--episodes", "ten"),
    ],  # fmt: skip
)
def test_a_non_positive_number_is_refused_naming_the_flag(command, flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--out", str(tmp_path / "o"), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}: expected a positive integer, got {value!r}" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["run", "--method", "ta"], ["eval", "--policy", "mypolicy:make"]])
def test_a_negative_video_count_is_refused_naming_the_flag(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--out", str(tmp_path / "o"), "--record-videos", "-1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --record-videos: expected an integer >= 0, got '-1'" in err
    assert not (tmp_path / "o").exists()


def test_an_unwritable_out_fails_in_one_line_before_any_merge(payload_set, capsys):
    expert_set, _ = payload_set
    out = "/proc/vlamergebench-out"  # unwritable even for root
    assert main(["run", "--method", "ta", "--experts", str(expert_set), "--out", out, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vlamergebench run: error: --out {out}: cannot write there (") and "\n" not in err
    assert not (expert_set / "merged").exists()


def test_a_method_config_that_is_not_an_object_is_one_line(payload_set, tmp_path, capsys):
    expert_set, _ = payload_set
    args = ["run", "--method", "ta", "--experts", str(expert_set), "--out", str(tmp_path / "o")]
    assert main([*args, "--method-config", "[1, 2]"]) == 1
    assert capsys.readouterr().err.strip() == (
        "vlamergebench run: error: --method-config: expected a JSON object, got list"
    )
