"""Routers: hand-computed scores, recorded decisions, and the real tiny policy behind the two learned
routers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlamergebench.merge_methods.registry import ROUTERS, make_method
from vlamergebench.merge_methods.routers import OracleRouter, value_subspace_score

torch.set_num_threads(1)


def observation(instruction, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "agentview_image": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
        "state": rng.uniform(-1, 1, 8).astype(np.float32),
        "instruction": instruction,
    }


def test_oracle_needs_and_records_the_true_skill():
    router = OracleRouter(skills=["a", "b"])
    assert router.route({}, true_skill="b") == "b"
    assert router.history[-1].chosen == "b" and router.history[-1].true_skill == "b"
    assert router.history[-1].scores == {"a": 0.0, "b": 1.0}
    with pytest.raises(ValueError, match="true_skill"):
        router.route({})
    with pytest.raises(KeyError, match="not one of"):
        router.route({}, true_skill="c")


def test_instruction_lookup(hand_set, tmp_path):
    merged = make_method("ta").merge(hand_set, tmp_path / "ta", progress=False)
    router = merged.router("instruction_lookup")
    assert router.route({"instruction": "  Please do SKILL_2 "}, true_skill="skill_2") == "skill_2"
    assert (
        router.route({"instruction": "something else"}, true_skill="skill_1") == "skill_0"
    )  # no match: first
    assert [d.chosen for d in router.history] == ["skill_2", "skill_0"]
    assert router.history[1].scores == {"skill_0": 0.0, "skill_1": 0.0, "skill_2": 0.0}


def test_value_subspace_score_by_hand():
    keys_adapter = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    keys_task = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    h_adapter = torch.tensor([[3.0, 4.0, 0.0, 0.0], [1.0, 0.0, 5.0, 0.0]])  # projections 3 and 1: mean 2
    h_task = torch.tensor([[0.0, 3.0, 4.0, 9.0]])  # projection (3, 4): norm 5
    assert value_subspace_score(keys_adapter, keys_task, h_adapter, h_task) == 3.5


def test_methods_name_registered_routers():
    assert {"oracle", "mergevla_value_subspace", "carve_text", "instruction_lookup"} <= set(ROUTERS.names())


def test_value_subspace_router_on_the_real_tiny_policy(tiny_set, tmp_path):
    merged = make_method("mergevla").merge(tiny_set, tmp_path / "mv", progress=False)
    router = merged.router()  # the method's own
    assert type(router).__name__ == "ValueSubspaceRouter"
    obs = observation("pick up the cream cheese and place it in the basket")
    chosen = router.route(obs, true_skill="object_1")
    assert chosen in tiny_set.skills and router.route(obs, true_skill="object_1") == chosen  # deterministic
    scores = router.history[0].scores
    assert set(scores) == set(tiny_set.skills) and all(np.isfinite(list(scores.values())))
    assert router.history[0].scores == router.history[1].scores
    chunk = router.candidate(chosen).predict(obs)  # the routed skill's policy runs
    assert chunk.shape == (8, 7) and np.all(np.isfinite(chunk))
    # any method can use this router: keys are then computed from each skill's instantiated head
    bank = make_method("lora_bank").merge(tiny_set, tmp_path / "bank", progress=False)
    assert bank.router("mergevla_value_subspace").route(obs) in tiny_set.skills


def test_carve_text_router_finds_each_training_instruction(tiny_set, tmp_path):
    merged = make_method("carve").merge(tiny_set, tmp_path / "carve", progress=False)
    router = merged.router()
    assert type(router).__name__ == "TextRouter"
    for skill in tiny_set.skills:
        instruction = merged.instructions(skill)[0]
        assert router.route(observation(instruction), true_skill=skill) == skill
        assert router.history[-1].scores[skill] == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("depth", [1, 2])
def test_value_subspace_router_reads_the_layer_the_first_expert_block_consumes(tiny_set, tmp_path, depth):
    """Upstream scores the states its expert block consumes: layer L + 1 - depth (entry L - depth here)."""
    merged = make_method("mergevla", expert_head_depth=depth).merge(tiny_set, tmp_path / "mv", progress=False)
    router = merged.router()
    layers = merged.policy_config["llm"]["num_layers"]
    assert router.state_index == layers - depth
    obs = observation("pick up the cream cheese and place it in the basket")
    skill = tiny_set.skills[0]
    states = router.candidate(skill).hidden_states([obs])
    keys_adapter, keys_task = router.keys[skill]
    expected = value_subspace_score(
        keys_adapter, keys_task, states.action[0, layers - depth], states.task[0, layers - depth]
    )
    assert router.scores(obs, None)[skill] == pytest.approx(expected)
