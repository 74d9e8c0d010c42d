"""Training frames from LIBERO-layout HDF5 demonstrations (``docs/formats.md`` section 2), held in memory.

Each frame t of a demo gives the policy's inputs at t (both camera images, resized once to the policy's image
size; the 8-D proprio ``ee_pos + ee_ori + gripper_states``; the instruction) and the target chunk
``actions[t : t + chunk]``. Near the end of a demo the chunk is padded by repeating the last action
(upstream's RLDS chunking pads the same way; success ends the episode there anyway). Normalisation
statistics are the 1st/99th percentiles over every frame used (upstream's BOUNDS_Q99); the gripper is not
normalised (mask false) when the policy binarises it.

Memory: uint8 images, ``frames x images x S x S x 3`` bytes (96 px: 55 kB a frame, 400 MB for 7,500 frames).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlamergebench.policies.checkpoint import NormStats, file_sha256
from vlamergebench.policies.config import VLAConfig
from vlamergebench.policies.demos import Demo, DemoError, DemoFile
from vlamergebench.policies.images import resize_uint8

__all__ = ["DemoError", "FrameDataset", "load_frames", "read_demo_file"]


@dataclass
class FrameDataset:
    """Every training frame, in memory.

    Attributes:
        images: ``(frames, num_images, S, S, 3)`` uint8, upright.
        proprio: ``(frames, proprio_dim)`` float32, env units.
        chunks: ``(frames, chunk, action_dim)`` float32, env units.
        instruction_index: ``(frames,)`` index into ``instructions``.
        instructions: Distinct instructions, in first-seen order.
        sources: Per file: path, sha256, number of demos and frames used, and the file's own attributes.
    """

    images: np.ndarray
    proprio: np.ndarray
    chunks: np.ndarray
    instruction_index: np.ndarray
    instructions: list[str]
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def norm_stats(self, binarize_gripper: bool) -> NormStats:
        """q01/q99 of actions and proprio over all frames; the gripper's mask is false when binarised."""
        actions = self.chunks[:, 0]
        mask = [True] * actions.shape[1]
        if binarize_gripper:
            mask[-1] = False
        return NormStats(
            action_q01=tuple(np.quantile(actions, 0.01, axis=0).tolist()),
            action_q99=tuple(np.quantile(actions, 0.99, axis=0).tolist()),
            action_mask=tuple(mask),
            proprio_q01=tuple(np.quantile(self.proprio, 0.01, axis=0).tolist()),
            proprio_q99=tuple(np.quantile(self.proprio, 0.99, axis=0).tolist()),
        )


def read_demo_file(
    path: str | os.PathLike[str], config: VLAConfig, max_demos: int | None = None, frame_stride: int = 1
) -> tuple[list[dict[str, np.ndarray]], str, dict[str, Any]]:
    """Per demo: images, proprio and chunks; plus the file's instruction and attributes.

    Args:
        path: An HDF5 file in the documented layout, read through ``policies/demos.py``.
        config: The policy config (image keys and size, chunk size, dims).
        max_demos: Use only the first ``max_demos`` demos.
        frame_stride: Use every ``frame_stride``-th frame as a training input (chunks still use every action).
    """
    demos = []
    with DemoFile(path) as handle:
        instruction = handle.instruction
        attributes = {"env_name": handle.env_name, "problem_info": handle.problem_info,
                      "vlamergebench": handle.provenance}  # fmt: skip
        for name in handle.demo_names[:max_demos]:
            demos.append(_frames(handle.read(name), f"{path}:/data/{name}", config, frame_stride))
    return demos, instruction, attributes


def _frames(demo: Demo, where: str, config: VLAConfig, stride: int) -> dict[str, np.ndarray]:
    actions = demo.actions.astype(np.float32)
    if actions.shape[1] != config.action_dim:
        raise DemoError(f"{where}/actions: shape {actions.shape}, expected (T, {config.action_dim})")
    proprio = demo.proprio
    if proprio.shape[1] != config.proprio_dim:
        raise DemoError(f"{where}/obs: proprio {list(demo.layout.proprio)} has shape {proprio.shape}, "
                        f"expected ({len(actions)}, {config.proprio_dim})")  # fmt: skip
    cameras = demo.images()
    missing = [key for key in config.image_keys if key not in cameras]
    if missing:
        raise DemoError(f"{where}/obs: no camera for policy image keys {missing}; it has {sorted(cameras)}")
    steps = np.arange(0, len(actions), stride)
    images = [resize_uint8(np.ascontiguousarray(cameras[key][steps]), config.vision.image_size)
              for key in config.image_keys]  # fmt: skip
    padded = np.concatenate([actions, np.repeat(actions[-1:], config.chunk_size - 1, axis=0)])
    chunks = np.stack([padded[t : t + config.chunk_size] for t in steps])  # (frames, chunk, action_dim)
    return {"images": np.stack(images, axis=1), "proprio": proprio[steps], "chunks": chunks}


def load_frames(
    paths: Sequence[str | os.PathLike[str]],
    config: VLAConfig,
    max_demos_per_file: int | None = None,
    frame_stride: int = 1,
) -> FrameDataset:
    """Every frame of every demo of ``paths``, resized to the policy's image size."""
    if not paths:
        raise DemoError("no demonstration files given")
    images, proprio, chunks, index, instructions, sources = [], [], [], [], [], []
    for path in paths:
        demos, instruction, attributes = read_demo_file(path, config, max_demos_per_file, frame_stride)
        if instruction not in instructions:
            instructions.append(instruction)
        frames = 0
        for demo in demos:
            images.append(demo["images"])
            proprio.append(demo["proprio"])
            chunks.append(demo["chunks"])
            index.append(np.full(len(demo["chunks"]), instructions.index(instruction)))
            frames += len(demo["chunks"])
        sources.append(
            {
                "path": str(path),
                "sha256": file_sha256(path),
                "demos": len(demos),
                "frames": frames,
                "instruction": instruction,
                **attributes,
            }
        )
    return FrameDataset(
        images=np.concatenate(images),
        proprio=np.concatenate(proprio),
        chunks=np.concatenate(chunks),
        instruction_index=np.concatenate(index),
        instructions=instructions,
        sources=sources,
    )
