"""The language model: a real ``transformers`` ``Qwen2Model`` (Qwen2.5-0.5B at reference size).

Upstream runs ``Qwen2ForCausalLM`` and computes logits for all ~630 positions although the L1 head never reads
them (+0.35 s per query on this CPU, research notes section 7). We build the bare ``Qwen2Model``: no
``lm_head``, no logits. Its parameter names become ``llm.*`` in our checkpoints (``language_model.model.*``
upstream). Attention is the stock causal attention, as upstream (VLA-Adapter does not switch to
bidirectional).
"""

from __future__ import annotations

from torch import Tensor

from vlamergebench.policies.config import LLMConfig


def build_llm(config: LLMConfig):
    """A randomly initialised ``Qwen2Model`` with the config's sizes (weights are loaded separately)."""
    from transformers import Qwen2Config, Qwen2Model

    qwen_config = Qwen2Config(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        intermediate_size=config.intermediate_size,
        vocab_size=config.vocab_size,
        rope_theta=config.rope_theta,
        rms_norm_eps=config.rms_norm_eps,
        max_position_embeddings=config.max_position_embeddings,
        hidden_act="silu",
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return Qwen2Model(qwen_config)


def run_llm(
    llm, embeddings: Tensor, attention_mask: Tensor | None, position_ids: Tensor
) -> tuple[Tensor, ...]:
    """All hidden states of the LLM.

    Args:
        llm: The ``Qwen2Model`` (possibly with LoRA layers injected).
        embeddings: ``(batch, length, hidden)`` input embeddings.
        attention_mask: ``(batch, length)`` 1 for real tokens, 0 for padding; None when nothing is padded.
        position_ids: ``(batch, length)`` positions that skip the padding, so a padded sequence sees the same
            positions as the unpadded one.

    Returns:
        ``num_layers + 1`` tensors ``(batch, length, hidden)``: the embeddings, then each layer's output; the
        last is after the final RMSNorm (the HF convention upstream relies on).
    """
    out = llm(
        inputs_embeds=embeddings,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        output_hidden_states=True,
    )
    return out.hidden_states
