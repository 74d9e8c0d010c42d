"""``VLAPolicy``: the evaluation face of the canonical VLA, built from tensors or a checkpoint directory.

It sits above both the model (:mod:`~vlamergebench.policies.model`) and checkpoint I/O
(:mod:`~vlamergebench.policies.io`), so that neither of those imports the other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlamergebench.policies.checkpoint import NormStats
from vlamergebench.policies.config import VLAConfig
from vlamergebench.policies.images import crop_resize, resize_uint8, to_float
from vlamergebench.policies.io import load_model
from vlamergebench.policies.model import (
    VLA,
    BridgeStates,
    PromptBatch,
    build_model,
    load_tensors,
    normalize_proprio,
    unnormalize_actions,
)
from vlamergebench.policies.tokenizer import Tokenizer, make_tokenizer


class VLAPolicy:
    """The evaluation interface (``docs/formats.md`` section 5) around a ``VLA`` and one set of statistics.

    ``predict`` takes an env observation (the config's image keys as upright ``uint8 (H, W, 3)``, the proprio
    key, the instruction) and returns a ``(chunk, action_dim)`` float32 chunk in env units: un-normalised with
    the checkpoint's q01/q99, and with the gripper binarised to LIBERO's -1 open / +1 close.
    """

    def __init__(
        self,
        model: VLA,
        norm_stats: NormStats,
        tokenizer: Tokenizer,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        """Wrap ``model`` (moved to ``device``/``dtype`` and set to eval mode)."""
        config = model.config
        if (
            len(norm_stats.action_q01) != config.action_dim
            or len(norm_stats.proprio_q01) != config.proprio_dim
        ):
            raise ValueError(
                f"norm stats have {len(norm_stats.action_q01)} action / "
                f"{len(norm_stats.proprio_q01)} proprio "
                f"dims, the policy expects {config.action_dim} / {config.proprio_dim}"
            )
        self.model = model.to(device=device, dtype=dtype).eval()
        self.norm_stats, self.tokenizer = norm_stats, tokenizer
        self.dtype, self.device = dtype, torch.device(device)
        self._prompts: dict[str, list[int]] = {}

    @property
    def config(self) -> VLAConfig:
        """The policy's config."""
        return self.model.config

    def reset(self) -> None:
        """Start an episode. The policy keeps no per-episode state (chunks are queued by the env wrapper)."""

    def prepare(self, observations: Sequence[Mapping[str, Any]]) -> tuple[Tensor, Tensor, PromptBatch]:
        """Model inputs of a batch of observations: images, normalised proprio, prompts."""
        config = self.config
        images, proprio, prompts = [], [], []
        for index, observation in enumerate(observations):
            for key in (*config.image_keys, config.proprio_key, config.instruction_key):
                if key not in observation:
                    raise KeyError(f"observation {index} lacks key {key!r}; it has {sorted(observation)}")
            frames = np.stack(
                [
                    resize_uint8(np.asarray(observation[k]), config.vision.image_size)
                    for k in config.image_keys
                ]
            )
            images.append(frames)
            state = np.asarray(observation[config.proprio_key], dtype=np.float64)
            if state.shape != (config.proprio_dim,):
                raise ValueError(
                    f"observation {index}: {config.proprio_key!r} has shape {state.shape}, "
                    f"expected ({config.proprio_dim},)"
                )
            proprio.append(normalize_proprio(state, self.norm_stats))
            prompts.append(self._prompt(str(observation[config.instruction_key])))
        pixels = to_float(np.stack(images)).flatten(0, 1)  # (batch * images, 3, S, S)
        pixels = crop_resize(pixels, config.vision.center_crop_fraction)
        pixels = pixels.view(len(observations), config.num_images, *pixels.shape[1:])
        return (
            pixels.to(self.device, self.dtype),
            torch.from_numpy(np.stack(proprio)).to(self.device, self.dtype),
            PromptBatch.from_lists(prompts, self.tokenizer.pad_id),
        )

    def _prompt(self, instruction: str) -> list[int]:
        if instruction not in self._prompts:
            self._prompts[instruction] = self.tokenizer.prompt_ids(
                self.config.llm.prompt_template, instruction
            )
        return self._prompts[instruction]

    @torch.inference_mode()
    def predict_batch(self, observations: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Action chunks ``(batch, chunk, action_dim)`` float32 in env units."""
        images, proprio, prompts = self.prepare(observations)
        normalized = self.model(images, proprio, prompts).float().cpu().numpy()
        actions = unnormalize_actions(normalized, self.norm_stats)
        if self.config.binarize_gripper:
            gripper = actions[..., -1]
            # Ours predict env units (-1 open, +1 close); released heads predict 1 open / 0 close, which
            # upstream maps through sign(2x - 1) and a sign flip.
            actions[..., -1] = (
                -np.sign(2 * gripper - 1)
                if self.config.gripper_open_is_one
                else np.where(gripper > 0, 1.0, -1.0)
            )
        return actions.astype(np.float32)

    def predict(self, observation: Mapping[str, Any]) -> np.ndarray:
        """One action chunk ``(chunk, action_dim)`` float32 in env units."""
        return self.predict_batch([observation])[0]

    @torch.inference_mode()
    def hidden_states(self, observations: Sequence[Mapping[str, Any]]) -> BridgeStates:
        """Per head block, the LLM hidden states ``h_t`` and ``h_a`` for a batch of observations (routers)."""
        images, _, prompts = self.prepare(observations)
        return self.model.bridge_states(images, prompts)

    @classmethod
    def from_state_dict(
        cls,
        config: VLAConfig,
        tensors: Mapping[str, Tensor],
        norm_stats: NormStats,
        *,
        tokenizer_dir: str | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        source: str = "state dict",
    ) -> VLAPolicy:
        """A policy from a complete tensor dict in the base namespace (e.g. a merged model for one skill)."""
        model = build_model(
            config, seed=0
        )  # real buffers (RoPE tables, pixel statistics) are not in the dict
        load_tensors(model, tensors, source)
        tokenizer = make_tokenizer(config.llm.tokenizer, config.llm.vocab_size, tokenizer_dir)
        return cls(model, norm_stats, tokenizer, dtype=dtype, device=device)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        base: str | os.PathLike[str] | None = None,
        tokenizer_dir: str | None = None,
        fold_lora: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> VLAPolicy:
        """A policy from a base or expert checkpoint directory (an expert needs its ``base``).

        ``fold_lora`` merges an expert's LoRA into the weights (faster; equal actions up to float rounding).
        """
        model, checkpoint = load_model(path, base=base, fold=fold_lora)
        tokenizer = make_tokenizer(model.config.llm.tokenizer, model.config.llm.vocab_size, tokenizer_dir)
        return cls(model, checkpoint.norm_stats(), tokenizer, dtype=dtype, device=device)
