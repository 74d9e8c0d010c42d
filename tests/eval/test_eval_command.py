"""`vlamergebench eval` (a checkpoint, a policy factory, a LeRobot policy: no merging), `methods`,
`--version`, and the one override syntax of `merge` and `run`, on a real tiny expert set and real LIBERO."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinyexperts import make_expert_set  # noqa: E402

from vlamergebench import __version__  # noqa: E402
from vlamergebench.cli import main  # noqa: E402
from vlamergebench.eval.store import ResultsStore  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


@pytest.fixture(scope="module")
def expert_set(tmp_path_factory):
    return make_expert_set(tmp_path_factory.mktemp("tiny"))


def _eval(expert_set, out, *subject):
    return ["eval", *subject, "--experts", str(expert_set), "--select", "object_0", "--episodes", "1",
            "--max-steps", "4", "--workers", "1", "--out", str(out), "--no-progress"]  # fmt: skip


def test_eval_a_policy_factory_stores_ranks_and_resumes(expert_set, tmp_path, monkeypatch, capsys):
    pytest.importorskip("libero.libero")
    example = re.search(r"```python\n# mypolicy.py[^\n]*\n(.*?)```", DOCS.read_text(), re.S)
    assert example, "docs/plugins.md lost its mypolicy example"
    (tmp_path / "mypolicy.py").write_text(example.group(1))
    monkeypatch.syspath_prepend(str(tmp_path))
    command = _eval(expert_set, tmp_path / "out", "--policy", "mypolicy:make", "--name", "still")
    assert main(command) == 0
    assert "1 episodes (1 run now, 0 resumed)" in capsys.readouterr().out
    with ResultsStore.open(tmp_path / "out", readonly=True) as store:
        episodes = store.episodes_frame()
    assert episodes["method"].tolist() == ["still"] and episodes["steps"].tolist() == [4]
    assert not episodes["success"].any()  # the arm never moves
    assert "| still · oracle |" in (tmp_path / "out" / "leaderboard" / "success.md").read_text()
    assert main(command) == 0
    assert "1 episodes (0 run now, 1 resumed)" in capsys.readouterr().out


def test_eval_a_lerobot_policy_through_the_adapter(expert_set, tmp_path, capsys):
    pytest.importorskip("libero.libero")  # the twin of a LeRobot policy: lerobot_twin.py
    command = _eval(expert_set, tmp_path / "out", "--policy", "lerobot_twin:make", "--name", "lerobot_twin")
    assert main(command) == 0, capsys.readouterr().err
    with ResultsStore.open(tmp_path / "out", readonly=True) as store:
        episodes = store.episodes_frame()
    assert episodes["method"].tolist() == ["lerobot_twin"] and episodes["steps"].tolist() == [4]
    assert episodes["error"].isna().all()


def test_eval_a_single_checkpoint(expert_set, tmp_path, capsys):
    pytest.importorskip("libero.libero")
    expert = expert_set.parent / "object_0"
    assert main(_eval(expert_set, tmp_path / "out", "--checkpoint", str(expert))) == 0
    with ResultsStore.open(tmp_path / "out", readonly=True) as store:
        runs, episodes = store.runs_frame(), store.episodes_frame()
    assert episodes["method"].tolist() == ["object_0"] and episodes["error"].isna().all()
    assert [json.loads(text)["evaluated"] for text in runs["method_config_json"]] == ["checkpoint"]


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        (["--policy", "no_such_module:make"], "--policy no_such_module:make: cannot import it"),
        (["--policy", "not a path"], "expected package.module:factory"),
        (["--merged", "/nonexistent"], "merged.json: missing"),
    ],
)
def test_eval_refuses_bad_subjects_before_any_rollout(expert_set, tmp_path, capsys, subject, message):
    assert main(_eval(expert_set, tmp_path / "out", *subject)) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "results.sqlite").exists()


def test_methods_lists_kind_paper_router_and_config_defaults(capsys):
    assert main(["methods", "--json"]) == 0
    catalogue = json.loads(capsys.readouterr().out)
    methods = {entry["name"]: entry for entry in catalogue["methods"]}
    ties = methods["ties"]
    assert (ties["arxiv"], ties["kind"], ties["needs_task_identity"]) == ("2306.01708", "one_shot", False)
    defaults = {field["name"]: field["default"] for field in methods["ties_per_tensor"]["config"]}
    assert defaults["topk_scope"] == "per_tensor"  # the registration's own default, not the class's
    assert defaults["keep_fraction"] == 0.2
    assert (methods["carve"]["kind"], methods["carve"]["router"]) == ("continual", "carve_text")
    assert methods["mergevla"]["needs_task_identity"] is True
    assert methods["lora_bank"]["needs_lora_factors"] and not methods["ties"]["needs_lora_factors"]
    assert "instruction_lookup" in {router["name"] for router in catalogue["routers"]}

    assert main(["methods", "ta"]) == 0
    text = capsys.readouterr().out
    assert "kind one_shot" in text and "arXiv:2212.04089" in text and "scale=1.0" in text
    assert "experts: LoRA or dense" in text
    assert main(["methods", "nope"]) == 2
    assert "unknown merge method 'nope'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"vlamergebench {__version__}"


def test_merge_and_run_take_both_override_forms(expert_set, tmp_path, capsys):
    out = tmp_path / "ties"
    command = ["merge", "--method", "ties", "--experts", str(expert_set), "--out", str(out), "--no-progress",
               "--method-config", '{"keep_fraction": 0.3, "scale": 0.5}',
               "--set", "keep_fraction=0.2"]  # fmt: skip
    assert main(command) == 0
    config = json.loads((out / "merged.json").read_text())["config"]
    assert (config["keep_fraction"], config["scale"]) == (0.2, 0.5)  # --set wins over --method-config

    run = ["run", "--experts", str(expert_set), "--out", str(tmp_path / "r"), "--method", "ties"]
    assert main([*run, "--set", "keep_fractoin=0.2"]) == 1
    assert "unknown field(s) ['keep_fractoin']" in capsys.readouterr().err
    assert main([*run, "--set", "keep_fraction"]) == 1
    assert "--set expects KEY=VALUE, got 'keep_fraction'" in capsys.readouterr().err
    assert main([*command[:-4], "--method-config", "[1]"]) == 2
    assert "--method-config: expected a JSON object, got list" in capsys.readouterr().err


@pytest.fixture(scope="module")
def merged_ta(expert_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "ta"
    assert (
        main(["merge", "--method", "ta", "--experts", str(expert_set), "--out", str(out), "--no-progress"])
        == 0
    )
    return out


def _pop(*keys):
    def edit(manifest):
        *parents, last = keys
        for key in parents:
            manifest = manifest[key]
        manifest.pop(last)

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_pop("base"), "missing field 'base'"),
        (_pop("base", "base_id"), "missing field 'base.base_id'"),
        (_pop("skills"), "missing field 'skills'"),
        (_pop("config"), "missing field 'config'"),
        (lambda manifest: manifest.update(skills=5), "field 'skills' must be a list, got 5"),
        (lambda manifest: manifest.update(router=3), "field 'router' must be text or null, got 3"),
        (lambda manifest: manifest.update(expert_set="x"), "field 'expert_set' must be an object, got 'x'"),
        ("{not json", "not valid JSON (Expecting property name"),
    ],
)
def test_a_malformed_merged_manifest_is_one_line_naming_file_and_field(
    expert_set, merged_ta, tmp_path, capsys, edit, message
):
    # These lookups once raised KeyError('base') etc., printed as "error: base" by a broad catch.
    broken = Path(shutil.copytree(merged_ta, tmp_path / "broken"))
    manifest_path = broken / "merged.json"
    if isinstance(edit, str):
        manifest_path.write_text(edit)
    else:
        manifest = json.loads(manifest_path.read_text())
        edit(manifest)
        manifest_path.write_text(json.dumps(manifest))
    assert main(_eval(expert_set, tmp_path / "out", "--merged", str(broken))) == 1
    error = capsys.readouterr().err.strip()
    assert error.splitlines() == [error]
    assert error.startswith(f"vlamergebench eval: error: {manifest_path}: {message}"), error
    assert not (tmp_path / "out" / "results.sqlite").exists()
