"""The tiny VLA: shapes, the bridge, the MergeVLA head's missing self-attention, padding, the policy face."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vlamergebench.policies.action_expert import MergeVLABlock, apply_rope, rope_tables
from vlamergebench.policies.checkpoint import NormStats
from vlamergebench.policies.config import ActionExpertConfig
from vlamergebench.policies.llm import run_llm
from vlamergebench.policies.model import PromptBatch, build_model, normalize_actions, unnormalize_actions
from vlamergebench.policies.policy import VLAPolicy
from vlamergebench.policies.registry import make_config
from vlamergebench.policies.tokenizer import HashedWordTokenizer, fnv1a_32


def _inputs(config, batch, instructions=("pick up the black bowl",)):
    generator = torch.Generator().manual_seed(0)
    size = config.vision.image_size
    images = torch.rand(batch, config.num_images, 3, size, size, generator=generator)
    proprio = torch.rand(batch, config.proprio_dim, generator=generator) * 2 - 1
    tokenizer = HashedWordTokenizer(config.llm.vocab_size)
    texts = [instructions[i % len(instructions)] for i in range(batch)]
    prompts = PromptBatch.from_lists([tokenizer.prompt_ids(config.llm.prompt_template, t) for t in texts], 0)
    return images, proprio, prompts


@pytest.fixture(scope="module")
def tiny():
    return build_model(make_config("tiny"), seed=0).eval()


def test_forward_and_bridge_shapes(tiny):
    config = tiny.config
    images, proprio, prompts = _inputs(config, 3)
    with torch.no_grad():
        actions = tiny(images, proprio, prompts)
        states = tiny.bridge_states(images, prompts)
    assert actions.shape == (3, config.chunk_size, config.action_dim)
    assert states.task.shape == (3, config.llm.num_layers, config.num_task_tokens, config.llm.hidden_size)
    assert states.action.shape == (
        3,
        config.llm.num_layers,
        config.num_action_queries,
        config.llm.hidden_size,
    )


def test_head_block_i_reads_llm_hidden_state_i_plus_1(tiny):
    config = tiny.config
    images, _, prompts = _inputs(config, 2)
    with torch.no_grad():
        states = tiny.bridge_states(images, prompts)
        embeddings, mask, positions, query_start = tiny._sequence(images, prompts)
        hidden = run_llm(tiny.llm, embeddings, mask, positions)
        final = tiny.llm(inputs_embeds=embeddings, position_ids=positions).last_hidden_state
    patches = slice(1, 1 + config.num_task_tokens)  # after prompt id 0, exactly the patches
    queries = slice(query_start, query_start + config.num_action_queries)
    for block in range(config.num_head_blocks):
        torch.testing.assert_close(states.task[:, block], hidden[block + 1][:, patches], rtol=0, atol=0)
        torch.testing.assert_close(states.action[:, block], hidden[block + 1][:, queries], rtol=0, atol=0)
    torch.testing.assert_close(states.task[:, -1], final[:, patches])  # the last entry is post-norm
    # The query embeddings are the learned action queries, right before the stop token.
    torch.testing.assert_close(embeddings[:, queries], tiny.action_queries.weight.expand(2, -1, -1))
    assert embeddings.shape[1] == query_start + config.num_action_queries + 1


def _head_outputs_with_perturbed_token(variant: str, token: int):
    config = make_config("tiny")
    config = config.replace(
        action_expert=ActionExpertConfig(variant=variant, gate="tanh" if variant != "mergevla" else "sigmoid")
    )
    model = build_model(config, seed=1).eval()
    width, blocks = config.llm.hidden_size, config.num_head_blocks
    generator = torch.Generator().manual_seed(2)
    task = torch.randn(1, blocks, config.num_task_tokens, width, generator=generator)
    action = torch.randn(1, blocks, config.num_action_queries, width, generator=generator)
    proprio = torch.randn(1, 1, width, generator=generator)
    noise = torch.randn(1, config.chunk_size, config.action_dim * width, generator=generator)
    bumped = noise.clone()
    bumped[:, token] += torch.randn(
        noise.shape[-1], generator=generator
    )  # not a constant: LayerNorm removes those
    with torch.no_grad():
        return model.action_head(task, action, proprio, noise), model.action_head(
            task, action, proprio, bumped
        )


def test_mergevla_head_has_no_self_attention():
    base, bumped = _head_outputs_with_perturbed_token("mergevla", token=3)
    others = [i for i in range(base.shape[1]) if i != 3]
    assert (base[:, 3] - bumped[:, 3]).abs().max() > 1e-3
    # Through every block, chunk token i depends on its own input only: the other tokens are bit-identical.
    assert torch.equal(base[:, others], bumped[:, others])


@pytest.mark.parametrize("variant", ["vla_adapter", "vla_adapter_pro"])
def test_vla_adapter_heads_do_have_self_attention(variant):
    base, bumped = _head_outputs_with_perturbed_token(variant, token=3)
    others = [i for i in range(base.shape[1]) if i != 3]
    assert (base[:, others] - bumped[:, others]).abs().max() > 1e-4


def test_mergevla_block_matches_the_formula_by_hand():
    """One block against a direct transcription of MergeVLA's equations (2 heads, width 8)."""
    torch.manual_seed(0)
    block = MergeVLABlock(8, ActionExpertConfig(num_heads=2))
    with torch.no_grad():
        block.gating_factor.fill_(0.3)
    x, h_adapter, h_task = torch.randn(1, 3, 8), torch.randn(1, 5, 8), torch.randn(1, 4, 8)

    def rope(t):  # t: (length, 4) one head; upstream's table cat([f, f]) with interleaved pairs
        inv = 1.0 / (10000 ** (torch.tensor([0.0, 2.0]) / 4))
        angles = torch.arange(t.shape[0]).float()[:, None] * torch.cat([inv, inv])[None]
        rotated = torch.stack([-t[:, 1], t[:, 0], -t[:, 3], t[:, 2]], dim=1)
        return t * angles.cos() + rotated * angles.sin()

    with torch.no_grad():
        outputs = []
        for head in range(2):
            cols = slice(4 * head, 4 * head + 4)
            qa = rope(block.q_proj_adapter(x)[0][:, cols])
            qt = rope(block.q_proj_task(x)[0][:, cols])
            ka = rope(block.k_adapter(h_adapter)[0][:, cols])
            kt = rope(block.k_task(h_task)[0][:, cols])
            logits = torch.cat(
                [qa @ ka.T, torch.sigmoid(torch.tensor(0.3)) * (qt @ kt.T)], dim=1
            ) / math.sqrt(4)
            values = torch.cat([block.v_adapter(h_adapter)[0][:, cols], block.v_task(h_task)[0][:, cols]])
            outputs.append(torch.softmax(logits, dim=1) @ values)
        o = block.o_proj(torch.cat(outputs, dim=1))
        expected = torch.relu(block.ffn[1](block.ffn[0](x[0] + o)))
        torch.testing.assert_close(block(x, h_adapter, h_task)[0], expected)


def test_rope_tables_follow_upstream_layout():
    cos, sin = rope_tables(3, 4, 10000.0, torch.device("cpu"), torch.float32)
    assert torch.allclose(cos[2], torch.cos(torch.tensor([2.0, 0.02, 2.0, 0.02])))
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    out = apply_rope(x, cos[1:2], sin[1:2])
    c, s = torch.cos(torch.tensor([1.0, 0.01, 1.0, 0.01])), torch.sin(torch.tensor([1.0, 0.01, 1.0, 0.01]))
    expected = torch.tensor([1.0, 2.0, 3.0, 4.0]) * c + torch.tensor([-2.0, 1.0, -4.0, 3.0]) * s
    torch.testing.assert_close(out[0, 0, 0], expected)


def test_padding_does_not_change_a_sample(tiny):
    config = tiny.config
    long, short = "put both the alphabet soup and the tomato sauce in the basket", "open the drawer"
    images, proprio, both = _inputs(config, 2, instructions=(long, short))
    _, _, alone = _inputs(config, 1, instructions=(short,))
    assert both.mask[1].sum() < both.mask.shape[1]  # the short prompt is padded
    with torch.no_grad():
        batched = tiny(images, proprio, both)[1]
        single = tiny(images[1:], proprio[1:], alone)[0]
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-5)


def test_hashed_tokenizer_is_fixed_and_separates_libero_words():
    assert fnv1a_32("") == 0x811C9DC5 and fnv1a_32("a") == 0xE40C292C
    tokenizer = HashedWordTokenizer(make_config("tiny").llm.vocab_size)
    from libero.libero import benchmark

    words = set()
    for suite in ("libero_spatial", "libero_object", "libero_goal", "libero_10"):
        for task in benchmark.get_benchmark_dict()[suite]().tasks:
            words.update(tokenizer.pieces(task.language))
    ids = {word: tokenizer.encode(word)[0] for word in words}
    assert len(words) > 50
    assert len(set(ids.values())) == len(words), "two LIBERO words share a hashed id"
    prompt = tokenizer.prompt_ids("to {instruction}?", "Open the Drawer")
    assert prompt == [1, *tokenizer.encode("to open the drawer ?")]


def test_normalisation_round_trip_and_gripper_mask():
    stats = NormStats((-1.0, 0.0), (1.0, 2.0), (True, False), (0.0,), (1.0,))
    actions = np.array([[0.5, 0.7], [-1.0, -1.0]])
    normalized = normalize_actions(actions, stats)
    np.testing.assert_allclose(
        normalized, [[0.5, 0.7], [-1.0, -1.0]], atol=1e-7
    )  # dim 0 maps [-1,1] to itself
    np.testing.assert_allclose(unnormalize_actions(np.array([[0.0, 0.3]]), stats), [[0.0, 0.3]], atol=1e-7)
    np.testing.assert_allclose(
        unnormalize_actions(
            np.array([[1.0, 0.3]]), NormStats((2.0, 0.0), (4.0, 1.0), (True, False), (0,), (1,))
        ),
        [[4.0, 0.3]],
        atol=1e-6,
    )


def test_policy_predicts_env_units(tiny):
    config = tiny.config
    stats = NormStats(
        (-0.5,) * 6 + (-1.0,), (0.5,) * 6 + (1.0,), (True,) * 6 + (False,), (-1.0,) * 8, (1.0,) * 8
    )
    policy = VLAPolicy(tiny, stats, HashedWordTokenizer(config.llm.vocab_size))
    rng = np.random.default_rng(0)
    observation = {
        "agentview_image": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 255, (128, 128, 3), dtype=np.uint8),
        "state": rng.normal(size=8).astype(np.float32),
        "instruction": "pick up the black bowl",
    }
    policy.reset()
    chunk = policy.predict(observation)
    assert chunk.shape == (config.chunk_size, config.action_dim) and chunk.dtype == np.float32
    assert set(np.unique(chunk[:, -1])) <= {-1.0, 1.0}
    assert np.all(np.abs(chunk[:, :6]) <= 0.5 + 1e-6)  # un-normalised into [q01, q99]
    batch = policy.predict_batch([observation, observation])
    np.testing.assert_allclose(batch[0], chunk, atol=1e-5)
    with pytest.raises(KeyError, match="wrist_image"):
        policy.predict({k: v for k, v in observation.items() if k != "wrist_image"})
    states = policy.hidden_states([observation])
    assert states.task.shape[:3] == (1, config.num_head_blocks, config.num_task_tokens)
