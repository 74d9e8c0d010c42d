"""A LeRobot policy behind the evaluation's policy protocol (``reset``, ``predict``), for ``eval --policy``.

LeRobot is never imported here: the adapter calls only the documented methods of the objects it is given, so
it works with any object that has them (and this module imports without LeRobot installed). Written against
LeRobot's ``PreTrainedPolicy`` (``lerobot/policies/pretrained.py``) and its evaluation loop
(``lerobot/scripts/lerobot_eval.py``, ``rollout``), read at LeRobot 0.4.4 and 0.6.2:

- ``policy.reset()``: clear the policy's caches (its queue of actions); called when an episode starts.
- ``policy.select_action(batch) -> Tensor (B, action_dim)``: one action to run now; a policy that predicts
  chunks queues them itself and returns the next one.
- ``batch`` (as LeRobot's ``preprocess_observation`` and env processors build it):
  ``observation.images.<camera>`` float32 ``(B, 3, H, W)`` in [0, 1], ``observation.state`` float32
  ``(B, D)``, ``task`` a list of B strings.
- Normalisation, tokenisation and the device live in the policy's processors (``make_pre_post_processors``):
  ``batch = preprocessor(batch)`` before ``select_action`` and ``action = postprocessor(action)`` after.

Our LIBERO observation (``docs/libero.md``) already has LeRobot's LIBERO state layout (end-effector
position, axis-angle, two gripper joints) and action convention (gripper -1 open / +1 close). LeRobot names
the cameras ``image`` (agentview) and ``image2`` (wrist), and its ``LiberoProcessorStep`` rotates LIBERO's
raw frames by 180 degrees; ours are the raw frames with only the rows reversed, so ``mirror_images``
reverses the columns to give a LeRobot-trained LIBERO policy the frames it was trained on.

Each ``predict`` returns a chunk of one action (``select_action`` keeps LeRobot's own chunk queue), so the
rollout asks again every step, as LeRobot's evaluation does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from vlamergebench.eval.policy import PolicyContractError

LIBERO_CAMERAS = {"agentview_image": "image", "wrist_image": "image2"}  # our key -> LeRobot's camera name
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
TASK_KEY = "task"


class LeRobotPolicy:
    """A LeRobot policy (``select_action``, ``reset``) as a policy of the evaluation protocol.

    Args:
        policy: The LeRobot policy, e.g. ``SmolVLAPolicy.from_pretrained(path)``.
        preprocessor: Its input pipeline (normalisation, tokenisation, device), or None to pass the batch as
            built (moved to ``device``).
        postprocessor: Its output pipeline (un-normalisation), or None.
        cameras: Our observation key -> LeRobot camera name (``observation.images.<name>``).
        state_key: Our observation key of the proprio vector (``observation.state``).
        instruction_key: Our observation key of the instruction (``task``).
        mirror_images: Reverse image columns (LeRobot's LIBERO frames; see the module docstring).
        device: Where the batch goes without a preprocessor (default: the policy's parameters' device).
    """

    def __init__(
        self,
        policy: Any,
        *,
        preprocessor: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        postprocessor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cameras: Mapping[str, str] = LIBERO_CAMERAS,
        state_key: str = "state",
        instruction_key: str = "instruction",
        mirror_images: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        missing = [name for name in ("select_action", "reset") if not callable(getattr(policy, name, None))]
        if missing:
            raise PolicyContractError(
                f"{type(policy).__name__} is not a LeRobot policy: it lacks {missing} "
                "(PreTrainedPolicy.select_action(batch), reset())"
            )
        self.policy = policy
        self.preprocessor, self.postprocessor = preprocessor, postprocessor
        self.cameras = dict(cameras)
        self.state_key, self.instruction_key = state_key, instruction_key
        self.mirror_images = mirror_images
        if device is None:
            parameters = getattr(policy, "parameters", None)
            first = next(iter(parameters()), None) if callable(parameters) else None
            device = first.device if first is not None else "cpu"
        self.device = torch.device(device)

    def reset(self) -> None:
        """A new episode: the policy drops its queued actions."""
        self.policy.reset()

    def batch(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        """Our observation as LeRobot's raw batch of one (before the preprocessor)."""
        for key in (*self.cameras, self.state_key, self.instruction_key):
            if key not in observation:
                raise KeyError(f"LeRobotPolicy: observation lacks {key!r}; it has {sorted(observation)}")
        batch: dict[str, Any] = {}
        for key, camera in self.cameras.items():
            frame = np.asarray(observation[key])
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
                raise ValueError(
                    f"LeRobotPolicy: observation {key!r} is {frame.dtype} {frame.shape}, "
                    "expected uint8 (H, W, 3)"
                )
            if self.mirror_images:
                frame = frame[:, ::-1]
            pixels = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)
            batch[IMAGE_PREFIX + camera] = pixels.unsqueeze(0)
        state = np.asarray(observation[self.state_key], dtype=np.float32).reshape(1, -1)
        batch[STATE_KEY] = torch.from_numpy(state)
        batch[TASK_KEY] = [str(observation[self.instruction_key])]
        return batch

    @torch.inference_mode()
    def predict(self, observation: Mapping[str, Any]) -> np.ndarray:
        """The next action, as a chunk of one ``(1, action_dim)`` float32 in env units."""
        batch = self.batch(observation)
        if self.preprocessor is not None:
            batch = self.preprocessor(batch)
        else:
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        action = self.policy.select_action(batch)
        if self.postprocessor is not None:
            action = self.postprocessor(action)
        one = isinstance(action, torch.Tensor) and (
            action.ndim == 1 or (action.ndim == 2 and len(action) == 1)
        )
        if not one:
            shape = tuple(action.shape) if isinstance(action, torch.Tensor) else type(action).__name__
            raise PolicyContractError(
                f"{type(self.policy).__name__}.select_action returned {shape}, "
                "expected a (1, action_dim) tensor"
            )
        return action.detach().float().cpu().numpy().reshape(1, -1)
