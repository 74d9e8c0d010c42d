"""Out-of-tree merge methods: a real installed distribution (``.dist-info`` with ``entry_points.txt``) and an
import path, through ``methods``, ``merge``, ``run`` with 2 spawned workers (one short episode), ``eval`` and
the leaderboard, in fresh processes; and the trust rules (nothing named by a file is imported)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "eval"))

from tinyexperts import make_expert_set  # noqa: E402

from vlamergebench.registry import Registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def plugin_source() -> str:
    """The example of docs/plugins.md, verbatim: the docs' code is what runs here."""
    text = (ROOT / "docs" / "plugins.md").read_text()
    block = re.search(r"```python\n# mymerge/__init__.py\n(.*?)```", text, re.S)
    assert block, "docs/plugins.md lost its mymerge example"
    return block.group(1)


def install_plugin(site: Path, version: str = "0.1.0") -> Path:
    """Lay out ``mymerge`` as pip installs a wheel: the package and its ``.dist-info``."""
    (site / "mymerge").mkdir(parents=True, exist_ok=True)
    (site / "mymerge" / "__init__.py").write_text(plugin_source())
    for old in site.glob("mymerge-*.dist-info"):
        for path in old.iterdir():
            path.unlink()
        old.rmdir()
    info = site / f"mymerge-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mymerge\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("[vlamergebench.merge_methods]\nmean_tv = mymerge:MeanTV\n")
    (info / "top_level.txt").write_text("mymerge\n")
    (info / "RECORD").write_text("mymerge/__init__.py,,\n")
    return site


def cli(*args: str, site: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site) if site else "", "OMP_NUM_THREADS": "1", "MUJOCO_GL": "egl"}
    return subprocess.run(
        [sys.executable, "-m", "vlamergebench.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


@pytest.fixture(scope="module")
def expert_set(tmp_path_factory):
    return make_expert_set(tmp_path_factory.mktemp("tiny"))


def test_registry_finds_installed_entry_points_without_importing_them(tmp_path, monkeypatch):
    site = install_plugin(tmp_path / "site")
    (site / "mymerge" / "__init__.py").write_text("raise SystemExit('imported')\n")  # listing must not import
    monkeypatch.syspath_prepend(str(site))
    methods = Registry("merge method", entry_point_group="vlamergebench.merge_methods")
    methods.register("ta", "vlamergebench.merge_methods.task_arithmetic:TaskArithmetic")
    assert methods.names() == ["ta", "mean_tv"]
    spec = methods.spec("mean_tv")
    assert spec.entry_point == "mymerge:MeanTV"
    assert spec.metadata["plugin"] == {"distribution": "mymerge", "version": "0.1.0"}
    assert "mymerge" not in sys.modules

    clashing = Registry("merge method", entry_point_group="vlamergebench.merge_methods")
    clashing.register("mean_tv", "somewhere.else:Builtin")  # a built-in name wins over a plug-in's
    assert clashing.spec("mean_tv").entry_point == "somewhere.else:Builtin"


def test_installed_plugin_runs_through_merge_run_with_two_workers_and_leaderboard(expert_set, tmp_path):
    pytest.importorskip("libero.libero")
    site = install_plugin(tmp_path / "site")

    listed = cli("methods", "mean_tv", "--json", site=site)
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)["methods"]
    assert entry["source"] == {"entry_point": "mymerge:MeanTV", "distribution": "mymerge", "version": "0.1.0"}
    assert (entry["arxiv"], entry["kind"], entry["router"]) == ("2212.04089", "one_shot", None)
    assert entry["config"] == [{"name": "scale", "type": "float", "default": 1.0}]

    merged = tmp_path / "merged"
    made = cli("merge", "--method", "mean_tv", "--experts", str(expert_set), "--out", str(merged),
               "--set", "scale=0.5", "--no-progress", site=site)  # fmt: skip
    assert made.returncode == 0, made.stderr
    manifest = json.loads((merged / "merged.json").read_text())
    assert manifest["method"] == "mean_tv" and manifest["config"] == {"scale": 0.5}
    assert manifest["method_source"]["version"] == "0.1.0"

    out = tmp_path / "run"
    ran = cli("run", "--method", "mean_tv", "--experts", str(expert_set), "--select", "object_0",
              "--episodes", "1", "--max-steps", "2", "--workers", "2", "--out", str(out), "--no-progress",
              site=site)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "1 episodes (1 run now, 0 resumed)" in ran.stdout
    assert "| mean_tv · oracle |" in (out / "leaderboard" / "success.md").read_text()
    from vlamergebench.eval.store import ResultsStore

    with ResultsStore.open(out, readonly=True) as store:
        episodes = store.episodes_frame()
    assert len(episodes) == 1 and episodes["error"].isna().all()  # a spawned worker re-imported the plug-in
    assert episodes["worker_pid"].iloc[0] != os.getpid()

    # A worker without the plug-in installed refuses the merged model, naming the method and its source.
    refused = subprocess.run(
        [sys.executable, "-c",
         f"from vlamergebench.eval.sources import MergedPolicies; MergedPolicies({str(merged)!r})"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    assert refused.returncode != 0
    assert (
        "merge method 'mean_tv' (mymerge:MeanTV from mymerge 0.1.0), which is not installed" in refused.stderr
    )

    # Another installed version than the one that wrote the merged model: refused, naming both.
    install_plugin(site, version="0.2.0")
    other = cli("eval", "--merged", str(merged), "--experts", str(expert_set), "--select", "object_0",
                "--episodes", "1", "--out", str(tmp_path / "e"), site=site)  # fmt: skip
    assert other.returncode == 1
    assert (
        "mymerge:MeanTV from mymerge 0.1.0; this process has mymerge:MeanTV from mymerge 0.2.0"
        in other.stderr
    )


def test_import_path_method_merges_and_evaluates_only_when_named(expert_set, tmp_path):
    pytest.importorskip("libero.libero")
    modules = tmp_path / "modules"  # a module on the path, not installed: no dist-info
    modules.mkdir()
    (modules / "mymerge.py").write_text(plugin_source())
    merged = tmp_path / "merged"
    made = cli("merge", "--method", "mymerge:MeanTV", "--experts", str(expert_set), "--out", str(merged),
               "--no-progress", site=modules)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert json.loads((merged / "merged.json").read_text())["method"] == "mymerge:MeanTV"

    evaluate = ["eval", "--merged", str(merged), "--experts", str(expert_set), "--select", "object_0",
                "--episodes", "1", "--max-steps", "2", "--workers", "1", "--out", str(tmp_path / "e"),
                "--no-progress"]  # fmt: skip
    unnamed = cli(*evaluate, site=modules)
    assert unnamed.returncode == 1
    assert "method 'mymerge:MeanTV' is an import path; it is imported only when the caller names it" in (
        unnamed.stderr
    )
    other = cli(*evaluate, "--method", "mymerge:Other", site=modules)
    assert other.returncode == 1 and "is an import path" in other.stderr
    named = cli(*evaluate, "--method", "mymerge:MeanTV", site=modules)
    assert named.returncode == 0, named.stderr
    assert "1 episodes (1 run now, 0 resumed)" in named.stdout


def test_a_file_never_names_code_to_import(expert_set, tmp_path, monkeypatch, capsys):
    from vlamergebench.cli import main
    from vlamergebench.merge_methods.merged import MergedModel
    from vlamergebench.plugins import PluginError

    assert main(["merge", "--method", "ta", "--experts", str(expert_set), "--out", str(tmp_path / "m"),
                 "--no-progress"]) == 0  # fmt: skip
    manifest_path = tmp_path / "m" / "merged.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(method="evilmod:Evil", method_source={"entry_point": "evilmod:Evil"})
    manifest_path.write_text(json.dumps(manifest))
    marker = tmp_path / "imported"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(PluginError, match="'evilmod:Evil' is an import path"):
        MergedModel.open(tmp_path / "m").method  # noqa: B018
    assert main(["eval", "--merged", str(tmp_path / "m"), "--experts", str(expert_set), "--episodes", "1",
                 "--out", str(tmp_path / "e")]) == 1  # fmt: skip
    assert "is an import path" in capsys.readouterr().err
    assert not marker.exists()
