"""`vlamergebench run` end to end on a real tiny expert set and the real LIBERO simulator (one task, a few
steps), its resume, and its refusals before any rollout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinyexperts import make_expert_set

from vlamergebench.cli import main
from vlamergebench.eval.run import RunConfig, run_command
from vlamergebench.eval.store import ResultsStore
from vlamergebench.eval.summary import validate_summary
from vlamergebench.merge_methods.merged import MergedModel


@pytest.fixture(scope="module")
def expert_set(tmp_path_factory):
    return make_expert_set(tmp_path_factory.mktemp("tiny"))


def test_run_merges_rolls_out_stores_and_ranks(expert_set, tmp_path, capsys):
    pytest.importorskip("libero.libero")
    out = tmp_path / "run"
    command = [
        "run",
        "--method",
        "ta",
        "--experts",
        str(expert_set),
        "--select",
        "object_0",
        "--episodes",
        "1",
        "--max-steps",
        "8",
        "--workers",
        "1",
        "--routing",
        "oracle,instruction_lookup",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert (
        "overall success of the final model (unweighted mean of suites): 0.0% [0.0, 79.3], 1 episodes"
        in printed
    )
    assert "suite libero_object (unweighted mean of its tasks): 0.0% [0.0, 79.3], 1 episodes" in printed
    assert "2 entries with no success: ta · oracle, ta · router instruction_lookup" in printed
    summary = json.loads((out / "summary.json").read_text())
    validate_summary(summary)
    assert [run["routing_mode"] for run in summary["runs"]] == ["named", "oracle"]
    assert summary["runs"][1]["settings"]["max_steps"] == 8 and summary["runs"][1]["episodes"] == 1
    assert "2 episodes (2 run now, 0 resumed)" in printed
    with ResultsStore.open(out, readonly=True) as store:
        episodes, storage = store.episodes_frame(), store.storage_frame()
    assert len(episodes) == 2 and set(episodes["routing_mode"]) == {"oracle", "named"}
    assert (episodes["admission_step"] == 2).all() and (episodes["steps"] == 8).all()
    assert episodes.loc[episodes["routing_mode"] == "named", "routed_skill"].tolist() == ["object_0"]
    merged_dir = next((out / "merged").iterdir())
    reported = pd.read_json(merged_dir / "storage.json", typ="series")
    assert (storage["total_bytes"] == reported["total_bytes"]).all()  # the method's own accounting, stored
    assert (storage["parameters"] == reported["parameters"]).all() and reported["parameters"] > 0
    assert (out / "leaderboard" / "leaderboard.html").is_file()
    merged_hash = MergedModel.open(merged_dir).config_hash  # one config hash: merged.json = store = page
    assert set(episodes["method_config_hash"]) == {merged_hash}
    assert merged_hash in (out / "leaderboard" / "leaderboard.html").read_text()

    assert main(command) == 0  # the same command again: nothing left to run, the merge is reused
    assert "2 episodes (0 run now, 2 resumed)" in capsys.readouterr().out
    assert [p.name for p in (out / "merged").iterdir()] == [merged_dir.name]


def test_run_evaluates_perturbed_variants_per_axis(expert_set, tmp_path, capsys):
    pytest.importorskip("libero.libero")
    out = tmp_path / "perturbed"
    command = ["run", "--method", "ta", "--experts", str(expert_set), "--select", "object_0",
               "--episodes", "1", "--max-steps", "8", "--workers", "1",
               "--perturbations", "light-L3-s0,camera-L1-s0", "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "3 episodes (3 run now, 0 resumed)" in printed
    assert "perturbed episodes (pooled over every variant): 0.0% [0.0, 65.8], 2 episodes" in printed
    assert "perturbed, axis camera (pooled over its levels): " in printed
    with ResultsStore.open(out, readonly=True) as store:
        episodes = store.episodes_frame().sort_values("variant")
    assert episodes["variant"].tolist() == ["", "camera-L1-s0", "light-L3-s0"]
    assert episodes["env_id"].tolist()[1:] == ["vlamergebench/LIBERO-Perturbed-Object-v0"] * 2
    assert episodes["perturbation_axis"].tolist()[1:] == ["camera", "light"]
    assert episodes["perturbation_level"].tolist()[1:] == ["1", "3"]
    success = (out / "leaderboard" / "success.md").read_text()
    section = success.split("## Perturbations (labelled aggregates)", 1)[1]
    assert all(label in section for label in ("pooled", "light", "camera"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "no_such_method"], "unknown merge method 'no_such_method'; registered:"),
        (["--method", "ta", "--routing", "method"], "method 'ta' has no router of its own"),
        (["--method", "ta", "--routing", "psychic"], "unknown router 'psychic'; registered:"),
        (["--method", "ta", "--select", "libero_90"], "not a skill or suite of the expert set"),
        (["--method", "ta", "--perturbations", "fog-L3"], "--perturbations item 'fog-L3': expected"),
        (
            ["--method", "ties", "--method-config", '{"keep_fractoin": 0.2}'],
            "unknown field(s) ['keep_fractoin']",
        ),
    ],
)
def test_bad_input_fails_before_any_rollout(expert_set, tmp_path, capsys, extra, message):
    assert main(["run", "--experts", str(expert_set), "--out", str(tmp_path / "o"), *extra]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.sqlite").exists()


def test_a_bad_expert_set_is_named(tmp_path, capsys):
    assert main(["run", "--method", "ta", "--experts", str(tmp_path)]) == 1
    assert f"{tmp_path}: no expert_set.json here" in capsys.readouterr().err


def test_ctrl_c_prints_one_line_saying_how_to_resume(expert_set, tmp_path):
    import signal
    import subprocess
    import time

    out = tmp_path / "o"
    command = [sys.executable, "-m", "vlamergebench.cli", "run", "--method", "ta", "--experts",
               str(expert_set), "--out", str(out), "--episodes", "3", "--max-steps", "200", "--workers", "1",
               "--no-progress"]  # fmt: skip
    # As from a terminal: a shell's background job (CI started with `&`) inherits SIGINT ignored, and Python
    # then honours that; the run's own handler is what this test is about, so the child starts with default.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 400
    while not (out / "results.sqlite").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside the rollouts
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "vlamergebench run: interrupted; every finished episode is stored; rerun the same command to resume"
    )


def test_sigkill_mid_run_on_libero_then_resume_loses_and_repeats_nothing(expert_set, tmp_path):
    import signal
    import subprocess
    import time

    from vlamergebench.eval.store import EPISODE_KEY

    out, episodes = tmp_path / "o", 4  # per task, two tasks
    command = [sys.executable, "-m", "vlamergebench.cli", "run", "--method", "ta", "--experts",
               str(expert_set), "--out", str(out), "--episodes", str(episodes), "--max-steps", "16",
               "--workers", "2", "--no-progress"]  # fmt: skip

    def stored():
        try:
            with ResultsStore.open(out, readonly=True) as store:
                return store.episodes_frame()
        except Exception:  # not created yet
            return None

    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 500
    while time.monotonic() < deadline and process.poll() is None:
        rows = stored()
        if rows is not None and len(rows) >= 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, process.communicate()
    before = stored()
    assert 2 <= len(before) < 2 * episodes, "the kill should land mid-way"

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    resumed = f"{2 * episodes} episodes ({2 * episodes - len(before)} run now, {len(before)} resumed)"
    assert resumed in result.stdout
    after = stored()
    assert len(after) == 2 * episodes and not after.duplicated(list(EPISODE_KEY)).any()
    assert sorted(after["episode_index"]) == sorted(list(range(episodes)) * 2)
    kept = before.set_index(list(EPISODE_KEY))
    assert after.set_index(list(EPISODE_KEY)).loc[kept.index].equals(kept)  # finished rows untouched


def test_run_records_videos_of_the_first_episodes_and_resumes_without_duplicates(
    expert_set, tmp_path, capsys
):
    """Real LIBERO, tiny preset: MP4s of the frames the policy read, in the store and on the page."""
    pytest.importorskip("libero.libero")
    iio = pytest.importorskip("imageio.v3")
    pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "run"

    def stored():
        with ResultsStore.open(out, readonly=True) as store:
            return store.episodes_frame(), store.videos_frame()

    # one episode through the library (no leaderboard: the machine is shared), then the command extends the
    # run to three episodes: a resume that runs episodes 1 and 2 and keeps episode 0's video
    config = RunConfig(method="ta", experts=str(expert_set), select=("object_0",), episodes_per_task=1,
                       workers=1, max_steps=12, out=str(out), progress=False, record_videos=2)  # fmt: skip
    run_command(config)
    first = stored()[1].iloc[0]
    command = ["run", "--method", "ta", "--experts", str(expert_set), "--select", "object_0", "--episodes",
               "3", "--max-steps", "12", "--workers", "1", "--record-videos", "2", "--out", str(out),
               "--no-progress"]  # fmt: skip
    assert main(command) == 0, capsys.readouterr().err
    assert "3 episodes (2 run now, 1 resumed)" in capsys.readouterr().out
    episodes, videos = stored()
    assert videos["episode_index"].tolist() == [0, 1]  # the first N = 2 only
    assert videos.iloc[0]["sha256"] == first["sha256"]  # episode 0's video was kept, not redone
    side = json.loads(episodes["settings_json"].iloc[0])["image_size"]
    for video in videos.itertuples():
        assert episodes.loc[episodes["episode_index"] == video.episode_index, "steps"].item() == 12
        frames = iio.imread(out / video.path, plugin="FFMPEG")  # decodes
        # a frame at reset and after each chunk of 8 steps (8, then the cap's 4): none rendered for the video
        assert frames.shape == (3, side, 2 * side, 3) == (video.frames, video.height, video.width, 3)
        assert video.cameras == "agentview_image,wrist_image" and frames.std() > 1  # a scene, not a blank
        assert video.bytes == (out / video.path).stat().st_size
        assert bytes(video.poster_jpeg).startswith(b"\xff\xd8\xff")
    files = [f for f in sorted((out / "videos").rglob("*")) if f.is_file()]
    assert files == sorted(out / path for path in videos["path"])  # one file per row, nothing twice

    page = (out / "leaderboard" / "leaderboard.html").read_text()
    assert page.count("<video ") == 2 and 'poster="data:image/jpeg;base64,' in page
    assert f'src="../{videos["path"].iloc[0]}"' in page  # relative to the page, so the folder can move
