"""Every registered merge method meets ``check_method`` (registering a method is what gets it tested)."""

from __future__ import annotations

import pytest
import torch

from vlamergebench.merge_methods.check import check_method
from vlamergebench.merge_methods.registry import METHODS, ROUTERS

torch.set_num_threads(1)


@pytest.mark.parametrize("name", METHODS.names())
def test_check_method_float32(name, hand_set, tmp_path):
    merged = check_method(name, hand_set, tmp_path)
    assert merged.skills == hand_set.skills
    assert merged.expert_set_id == hand_set.id


@pytest.mark.parametrize("name", ["ta", "ties", "mergevla", "carve", "lora_bank"])
def test_check_method_bfloat16(name, bf16_set, tmp_path):
    check_method(name, bf16_set, tmp_path)


def test_registry_metadata_is_complete():
    for spec in METHODS:
        for key in ("paper", "arxiv", "needs_task_identity", "router", "kind", "stores"):
            assert key in spec.metadata, (spec.name, key)
        assert spec.metadata["kind"] in ("one_shot", "continual")
        assert spec.metadata["router"] is None or spec.metadata["router"] in ROUTERS


@pytest.mark.parametrize("name", METHODS.names())
def test_check_method_on_real_tiny_experts(name, tiny_set, tmp_path):
    """The same contract on real tiny-preset checkpoints, and every skill loads into the real policy."""
    from vlamergebench.policies.config import VLAConfig
    from vlamergebench.policies.policy import VLAPolicy

    merged = check_method(name, tiny_set, tmp_path)
    weights = merged.instantiate(tiny_set.skills[-1])
    policy = VLAPolicy.from_state_dict(VLAConfig.from_dict(weights.policy_config), weights.tensors,
                                       weights.norm_stats)  # fmt: skip
    assert policy.config.name == "tiny"


def test_a_method_names_its_config_when_defined():
    from vlamergebench.merge_methods.base import OneShotMethod, TaskVectorMethod
    from vlamergebench.merge_methods.ties import Ties, TiesConfig

    assert Ties.config_class is TiesConfig  # taken from TaskVectorMethod[TiesConfig]
    with pytest.raises(TypeError, match="NoConfig: declare the config"):

        class NoConfig(OneShotMethod):  # concrete, but no config type argument
            def write(self, experts, work, progress):
                return {}

            def instantiate(self, model, skill):
                return {}

    class StillAbstract(TaskVectorMethod):  # abstract (no merged_delta): checked only when made concrete
        pass

    assert StillAbstract.__abstractmethods__ == frozenset({"merged_delta"})


def test_the_one_admission_loop_keeps_and_reuses_snapshots(hand_set, tmp_path):
    from vlamergebench.merge_methods.registry import make_method

    snapshots = tmp_path / "snapshots"
    first = make_method("carve").admissions(hand_set, snapshots)
    assert [model.skills for model in first] == [
        hand_set.skills[:t] for t in range(1, len(hand_set.skills) + 1)
    ]
    stamps = [(model.path / "merged.json").stat().st_mtime_ns for model in first]
    again = make_method("carve").admissions(hand_set, snapshots, reuse=True, overwrite=True)
    assert [
        (model.path / "merged.json").stat().st_mtime_ns for model in again
    ] == stamps  # resumed, not redone
    other = make_method("carve", seed=1).admissions(hand_set, snapshots, reuse=True, overwrite=True)
    assert all(model.config["seed"] == 1 for model in other)  # another config: every snapshot rewritten
    with pytest.raises(FileExistsError):
        make_method("carve").admissions(hand_set, snapshots)  # without overwrite nothing is replaced
