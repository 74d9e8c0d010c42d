"""``--device cpu|cuda|auto``: resolved once, before anything runs; a missing GPU is one line naming the flag;
the device is part of a run's settings and shown on the entries board."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "leaderboards"))

from handmade import make_episodes  # noqa: E402

from vlamergebench.cli import main  # noqa: E402
from vlamergebench.eval.devices import resolve_device  # noqa: E402
from vlamergebench.eval.evaluate import EvalConfig  # noqa: E402
from vlamergebench.eval.run import RunConfig, run_settings  # noqa: E402
from vlamergebench.eval.store import ResultsStore, RunRecord  # noqa: E402
from vlamergebench.leaderboards.registry import build_leaderboards  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def test_auto_resolves_to_what_this_machine_has_and_is_recorded_as_that_device():
    expected = "cuda" if HAS_CUDA else "cpu"
    assert resolve_device("auto") == expected
    auto = RunConfig(method="ta", device="auto")
    assert auto.device == expected
    assert EvalConfig(kind="policy", subject="m:f", device="auto").device == expected
    # the run's identity is that of the device it resolved to (a CPU run keeps the default settings)
    assert run_settings(auto, 84) == run_settings(RunConfig(method="ta", device=expected), 84)
    assert run_settings(RunConfig(method="ta", device="cpu", dtype="bfloat16"), 84)["device"] == "cpu"


def test_unknown_devices_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"--device 'tpu': expected one of cpu, cuda, cuda:N, auto"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="--device 'cuda:x'"):
        RunConfig(method="ta", device="cuda:x")


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("command", ["run", "eval"])
def test_cuda_without_a_gpu_fails_at_start_with_one_line(tmp_path, capsys, command):
    subject = ["--method", "ta"] if command == "run" else ["--checkpoint", str(tmp_path)]
    out = tmp_path / "out"
    assert main([command, *subject, "--device", "cuda", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"vlamergebench {command}: error: --device cuda: torch ")
    assert "sees no CUDA GPU on this machine; use --device cpu or --device auto" in err
    assert not out.exists()  # refused before the output directory, any merge or rollout
    # Ray actors run elsewhere: the driver does not refuse cuda there (the actors ask Ray for GPUs)
    assert RunConfig(method="ta", device="cuda", executor="ray").device == "cuda"


def test_the_entries_board_shows_each_entrys_device(tmp_path):
    with ResultsStore.open(tmp_path / "r") as store:
        for name, settings in (("on_cpu", {}), ("on_gpu", {"device": "cuda", "dtype": "bfloat16"})):
            run = RunRecord.create(method=name, method_config={}, expert_set_id="set0", skills=("a1",),
                                   protocol="one_shot", routing_mode="oracle", router=None, run_seed=0,
                                   settings=settings)  # fmt: skip
            store.register_run(run)
            for record in make_episodes(run, 1, "a1", 2):
                store.add_episode(record)
    build_leaderboards([tmp_path / "r"], tmp_path / "board", ["entries"])
    shown = pd.read_csv(tmp_path / "board" / "entries_settings.csv").set_index("method")
    assert shown.loc["on_cpu", "device"] == "cpu float32" and shown.loc["on_gpu", "device"] == "cuda bfloat16"
    # the device does not split the ranking: both entries are ranked together
    assert shown["comparable"].all()
