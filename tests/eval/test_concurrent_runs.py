"""Two invocations on one output directory: the store's creation and run registration are race-free, and a
second `vlamergebench run` refuses in one line naming the process that holds the directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from vlamergebench.cli import main
from vlamergebench.eval.run import out_lock
from vlamergebench.eval.store import ResultsStore

OPEN_AND_REGISTER = """
import sys, time
from vlamergebench.eval.store import ResultsStore, RunRecord
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
run = RunRecord.create(method="m", method_config={}, expert_set_id="s", skills=["a"], protocol="one_shot",
                       routing_mode="oracle", router=None, run_seed=0)
with ResultsStore.open(sys.argv[1]) as store:
    store.register_run(run)
"""


def test_simultaneous_opens_create_and_register_without_errors(tmp_path):
    start = time.time() + 8  # every process is imported and waiting by then, even on a loaded machine
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AND_REGISTER, str(tmp_path / "o"), str(start)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(12)
    ]
    failures = [p.stderr.read() for p in processes if p.wait(timeout=300) != 0]
    assert failures == []
    with ResultsStore.open(tmp_path / "o", readonly=True) as store:
        assert len(store.runs_frame()) == 1


def test_a_second_run_on_a_held_out_refuses_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "o"
    with out_lock(out):
        assert main(["run", "--method", "ta", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vlamergebench run: error: --out {out} is in use by pid {os.getpid()} ")
    assert "\n" not in err and not (out / "results.sqlite").exists()
    with out_lock(out):  # released on exit: the next run may take it
        pass
