"""Action-chunk execution that renders only the frame the policy will read.

VLAs such as the MergeVLA reference predict a chunk of actions (8) per inference and execute all of them
before looking again. Rendering dominates a LIBERO step on a CPU (~80-100 ms of ~90-110 ms), so rendering the
intermediate frames that nobody reads wastes most of the time. :class:`ChunkedActions` runs the chunk with the
cameras off and renders once, for the observation it returns.

A family supports it by implementing, on its unwrapped env, the contract's
:class:`~vlamergebench.envs.contract.ChunkableRendering` (docs/formats.md section 1):

* ``set_camera_rendering(enabled: bool) -> None``: while disabled, camera entries of returned observations
  repeat the last rendered frame;
* ``render_cameras() -> dict[str, np.ndarray]``: render the current state's camera entries now (used when the
  episode ends inside a chunk, where the last step was run with the cameras off).

Observation wrappers that change images (sensor noise, ...) must sit outside this wrapper, because the
early-end path above reads the cameras from the unwrapped env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from vlamergebench.envs.contract import missing_chunkable_methods


class ChunkedActions(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Execute ``(chunk_size, action_dim)`` actions per ``step``; render only the returned observation.

    The chunk stops early when a step terminates or truncates. ``step`` returns the last step's observation,
    terminated, truncated and info, the *sum* of the executed steps' rewards, and ``info["executed_steps"]``
    (how many rows of the chunk ran).

    Args:
        env: an env whose ``unwrapped`` implements ``ChunkableRendering`` (``set_camera_rendering`` and
            ``render_cameras``), with a ``Box`` action space of shape ``(action_dim,)``.
        chunk_size: number of actions per chunk (>= 1).
    """

    def __init__(self, env: gym.Env, chunk_size: int) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, chunk_size=chunk_size)
        gym.Wrapper.__init__(self, env)
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        missing = missing_chunkable_methods(env.unwrapped)
        if missing:
            raise TypeError(
                f"{type(env.unwrapped).__name__} cannot run chunked: it lacks {missing} "
                "(docs/formats.md section 1, chunked execution)"
            )
        single = env.action_space
        if not isinstance(single, gym.spaces.Box) or len(single.shape) != 1:
            raise TypeError(f"ChunkedActions needs a 1-D Box action space, got {single}")
        self.chunk_size = chunk_size
        self.action_space = gym.spaces.Box(
            low=np.tile(single.low, (chunk_size, 1)),  # (chunk, action_dim)
            high=np.tile(single.high, (chunk_size, 1)),
            dtype=single.dtype,
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """Reset with the cameras on (the policy reads the first observation)."""
        self.env.unwrapped.set_camera_rendering(True)
        return self.env.reset(seed=seed, options=options)

    def step(self, chunk: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        """Run the rows of ``chunk`` in order; stop at termination or truncation."""
        chunk = np.asarray(chunk)
        if chunk.shape != self.action_space.shape:
            raise ValueError(f"action chunk has shape {chunk.shape}, expected {self.action_space.shape}")
        unwrapped = self.env.unwrapped
        total_reward = 0.0
        try:
            for index, action in enumerate(chunk):
                last = index == len(chunk) - 1
                unwrapped.set_camera_rendering(last)
                observation, reward, terminated, truncated, info = self.env.step(action)
                total_reward += float(reward)
                if terminated or truncated:
                    break
            if not last:  # ended inside the chunk: the returned frame must still be the current one
                observation = {**observation, **unwrapped.render_cameras()}
        finally:
            unwrapped.set_camera_rendering(True)
        return observation, total_reward, terminated, truncated, {**info, "executed_steps": index + 1}
