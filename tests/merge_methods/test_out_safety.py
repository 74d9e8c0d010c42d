"""`vlamergebench merge` never destroys its inputs, leaves nothing hidden behind after a killed merge, and
creates what it writes with the user's umask (a shared run directory stays readable)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vlamergebench.cli import main


def _digest(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture()
def fresh_set(tmp_path, builders):
    return builders.build_set(tmp_path / "set", count=2)


@pytest.mark.parametrize("target", ["expert0", "base", ".", "expert1/inside", ".."])
def test_an_out_overlapping_an_input_is_refused_and_the_inputs_survive(fresh_set, target, capsys):
    before = _digest(fresh_set.path)
    out = (fresh_set.path / target).resolve()
    common = ["--experts", str(fresh_set.path), "--out", str(out), "--overwrite", "--no-progress"]
    status = main(["merge", "--method", "ta", *common])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"vlamergebench merge: error: --out {out} overlaps the input" in err
    assert _digest(fresh_set.path) == before


def test_a_killed_merge_leaves_hidden_work_that_the_next_merge_removes(fresh_set, tmp_path):
    out = tmp_path / "merged"
    # A real process dies (SIGKILL: no handler, no finally) with a merge's hidden work directory open.
    script = (
        "import os, signal, sys\n"
        "from vlamergebench.merge_methods.io import AtomicDirectory\n"
        f"work = AtomicDirectory({str(out)!r})\n"
        "work.write_json('merged.json', {'half': True})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], timeout=120)
    assert done.returncode == -signal.SIGKILL
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".merged.")]
    assert main(["merge", "--method", "ta", "--experts", str(fresh_set.path), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_merged_directories_are_created_with_the_umask(fresh_set, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "runs" / "merged"
        assert main(["merge", "--method", "ta", "--experts", str(fresh_set.path), "--out", str(out),
                     "--no-progress"]) == 0  # fmt: skip
    finally:
        os.umask(old)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    assert {oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_dir()} <= {oct(0o755)}


def test_merged_models_of_a_run_are_keyed_on_the_method_code_version(hand_set, tmp_path):
    from vlamergebench.eval.run import method_code_version, models_per_step
    from vlamergebench.merge_methods.registry import make_method

    [(_, model, _)] = models_per_step(make_method("ta"), hand_set, "one_shot", tmp_path, False)
    assert model.path.name.endswith(f"-code{method_code_version('ta')}")
    assert len(method_code_version("ta")) == 12 and method_code_version("ta") != method_code_version("ties")
