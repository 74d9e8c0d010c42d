"""The Ray executor on a real local Ray cluster and the point env: same episodes and outcomes as the local
executor, an actor killed mid-episode, a deterministic killer stored as an infrastructure error, the driver
killed and rerun, and a merged model sent through the object store to an actor that cannot see its path."""

from __future__ import annotations

import functools
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import evalworld  # noqa: E402
from tinyexperts import make_expert_set  # noqa: E402

from vlamergebench.eval.runner import run_phase  # noqa: E402
from vlamergebench.eval.sources import merged_model_dirs, merged_policies  # noqa: E402
from vlamergebench.eval.store import EPISODE_KEY, ResultsStore, RunRecord  # noqa: E402
from vlamergebench.eval.work import Contender, Phase, RunOptions, TaskUnit  # noqa: E402
from vlamergebench.merge_methods.registry import make_method  # noqa: E402
from vlamergebench.policies.checkpoint import ExpertSet  # noqa: E402

ray = pytest.importorskip("ray")

SKILLS = ("left", "right")
COLUMNS = ["success", "steps", "seed", "init_state_id", "routed_skill"]


@pytest.fixture(scope="module")
def cluster():
    # Ray's processes inherit this environment: every actor (of any driver on this cluster) imports evalworld.
    previous = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), previous]))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if previous is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = previous


def _run():
    return RunRecord.create(method="controllers", method_config={}, expert_set_id="points", skills=SKILLS,
                            protocol="one_shot", routing_mode="oracle", router=None, run_seed=5)  # fmt: skip


def _evaluate(where, units, episodes, contender=None, **options):
    contender = contender or Contender(functools.partial(evalworld.Controllers, SKILLS))
    with ResultsStore.open(where) as store:
        summary = run_phase(
            store, _run(), Phase(1, units, episodes), contender, RunOptions(progress=False, **options)
        )
        return summary, store.episodes_frame().set_index(["skill", "episode_index"]).sort_index()


def test_ray_matches_local_and_a_killed_actor_costs_only_its_episode(cluster, tmp_path):
    plain = tuple(TaskUnit(s, "points", s, evalworld.ENV_ID, {"task": s}) for s in SKILLS)
    _, local = _evaluate(tmp_path / "local", plain, 5)
    killers = (
        # left: the actor running init state 3 is killed once; the retry on a fresh actor succeeds
        TaskUnit("left", "points", "left", evalworld.ENV_ID,
                 {"task": "left", "crash_init_states": [3], "crash_once_path": str(tmp_path / "crashed")}),
        # right: init state 2 kills every actor that runs it
        TaskUnit("right", "points", "right", evalworld.ENV_ID, {"task": "right", "crash_init_states": [2]}),
    )  # fmt: skip
    summary, on_ray = _evaluate(tmp_path / "ray", killers, 5, executor="ray", workers=2)
    assert summary.ran == 10 and len(on_ray) == 10 and (tmp_path / "crashed").exists()
    lost = on_ray.loc[("right", 2)]
    assert (
        lost["error"].startswith("infrastructure: the Ray actor died in each of 3 attempts")
        and not lost["success"]
    )
    kept = on_ray.drop(index=("right", 2))
    assert kept["error"].isna().all()
    assert kept[COLUMNS].equals(local.drop(index=("right", 2))[COLUMNS])  # the retried left/3 included
    assert 0 < kept["success"].sum() < 9
    assert kept["worker_pid"].nunique() >= 3  # the killed actor was replaced
    assert os.getpid() not in set(kept["worker_pid"])  # episodes ran in actors, not in the driver


def _stored(store_dir):
    try:
        with ResultsStore.open(store_dir, readonly=True) as store:
            return store.episodes_frame()
    except Exception:  # not created yet
        return None


def test_ray_driver_killed_and_rerun_loses_and_repeats_nothing(cluster, tmp_path):
    episodes = 6
    command = [
        sys.executable,
        str(HERE / "point_run.py"),
        str(tmp_path),
        str(episodes),
        "0.02",
        "ray",
        cluster,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        rows = _stored(tmp_path)
        if rows is not None and len(rows) >= 3:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.communicate()
    before = _stored(tmp_path)
    assert 3 <= len(before) < 2 * episodes, "the kill should land mid-way"

    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"RAN={2 * episodes - len(before)} RESUMED={len(before)} EPISODES={2 * episodes}" in result.stdout
    after = _stored(tmp_path)
    assert len(after) == 2 * episodes and not after.duplicated(list(EPISODE_KEY)).any()
    kept = before.set_index(list(EPISODE_KEY))
    assert after.set_index(list(EPISODE_KEY)).loc[kept.index].equals(kept)  # finished rows untouched
    assert after["error"].isna().all()


def test_a_merged_model_reaches_an_actor_that_cannot_see_its_path(cluster, tmp_path, monkeypatch):
    skills = [{"name": s, "suite": "points", "task": s, "task_id": i, "env_id": evalworld.VLA_ENV_ID}
              for i, s in enumerate(SKILLS)]  # fmt: skip
    experts = ExpertSet.open(make_expert_set(tmp_path / "experts", skills))
    monkeypatch.chdir(tmp_path)  # the actors keep the working directory the cluster started in
    merged = "merged/ta"  # relative: this process sees it, the actors do not
    make_method("ta").merge(experts, merged, progress=False)
    sees = ray.remote(num_cpus=0)(lambda path: os.path.isdir(path))
    assert not ray.get(sees.remote(merged))
    units = tuple(TaskUnit(s, "points", s, evalworld.VLA_ENV_ID, {"task": s}) for s in SKILLS)
    contender = Contender(merged_policies(merged), model_dirs=merged_model_dirs(merged))
    assert contender.model_dirs == ("merged/ta", os.path.normpath(experts.base.path))  # the base: visible
    copies_before = set(glob.glob(os.path.join(tempfile.gettempdir(), "vlamergebench-model-*")))

    _, local = _evaluate(tmp_path / "local", units, 3, contender)
    summary, on_ray = _evaluate(tmp_path / "ray", units, 3, contender, executor="ray", workers=1)
    assert summary.ran == 6 and on_ray["error"].isna().all() and local["error"].isna().all()
    assert on_ray[COLUMNS].equals(local[COLUMNS])
    assert local["steps"].nunique() > 1  # episode lengths follow the model's actions
    assert os.getpid() not in set(on_ray["worker_pid"])
    # the actor's copy is deleted when the run ends
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "vlamergebench-model-*"))) == copies_before
