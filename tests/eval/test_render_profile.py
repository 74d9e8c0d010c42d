"""``--render-profile``: part of every task unit's env kwargs (so of each stored episode and simulator key)
and of the run's settings (so of its id and comparability key) when not the default; refused for envs
without render profiles and for unknown names."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tinyexperts import SKILLS, make_expert_set  # noqa: E402

from vlamergebench.eval.evaluate import EvalConfig  # noqa: E402
from vlamergebench.eval.run import RunConfig, run_settings, task_units  # noqa: E402
from vlamergebench.policies.checkpoint import ExpertSet  # noqa: E402

ALOHA = {**SKILLS[0], "name": "cube", "suite": "aloha", "env_id": "vlamergebench/AlohaTransferCube-v0"}
LIBERO = ("libero_object", "libero_spatial")


@pytest.fixture(scope="module")
def experts(tmp_path_factory):
    return ExpertSet.open(make_expert_set(tmp_path_factory.mktemp("experts"), [*SKILLS, ALOHA]))


def test_the_fast_profile_reaches_every_unit_and_the_runs_settings(experts):
    fast = task_units(experts, LIBERO, 84, ("camera-L1-s0",), render_profile="fast")
    assert len(fast) == 4 and {unit.env_kwargs["render_profile"] for unit in fast} == {"fast"}
    assert {unit.env_id for unit in fast} >= {"vlamergebench/LIBERO-Perturbed-Object-v0"}
    full = task_units(experts, LIBERO, 84, ("camera-L1-s0",))
    assert all("render_profile" not in unit.env_kwargs for unit in full)  # full runs keep their keys and ids
    assert {u.env_key for u in fast}.isdisjoint({u.env_key for u in full})  # never one simulator for both
    assert run_settings(RunConfig(method="ta", render_profile="fast"), 84)["render_profile"] == "fast"
    assert "render_profile" not in run_settings(RunConfig(method="ta"), 84)
    assert run_settings(EvalConfig(kind="policy", subject="m:f", render_profile="fast"), 84) == {
        "max_steps": None, "image_size": 84, "render_profile": "fast"
    }  # fmt: skip


def test_envs_without_render_profiles_and_unknown_profiles_are_refused(experts):
    with pytest.raises(ValueError, match=r"--render-profile fast: skill 'cube' runs on vlamergebench/Aloha"):
        task_units(experts, ("cube",), 84, render_profile="fast")
    assert len(task_units(experts, ("cube",), 84)) == 1
    with pytest.raises(ValueError, match=r"--render-profile 'ultra': expected one of full, fast"):
        RunConfig(method="ta", render_profile="ultra")
