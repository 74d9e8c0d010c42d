"""A twin of a LeRobot policy: the ``PreTrainedPolicy`` surface the adapter relies on, and its processors.

LeRobot cannot be installed beside this project's torch (docs/so101.md), so the adapter
(``vlamergebench.eval.lerobot_policy``) is tested against this class, which behaves as LeRobot's chunking
policies (ACT, SmolVLA) do in
``lerobot/policies/*/modeling_*.py``: ``select_action`` pops from a queue of ``n_action_steps`` actions that
``predict_action_chunk`` fills when it is empty, and ``reset`` empties the queue. The processors stand in for
``make_pre_post_processors``'s pipelines (normalise the state, un-normalise the action).
"""

from __future__ import annotations

from collections import deque

import torch

from vlamergebench.eval.lerobot_policy import LeRobotPolicy

ACTION_DIM, CHUNK = 7, 3
STATE_MEAN, STATE_STD, ACTION_SCALE = 0.5, 2.0, 0.1


class TwinPolicy(torch.nn.Module):
    """Actions from the batch: arm = k * mean image brightness (chunk step k), gripper = sign of state[0]."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a parameter, as every policy has (its device)
        self._queue: deque[torch.Tensor] = deque()
        self.chunks = 0
        self.batches: list[dict] = []

    def reset(self) -> None:
        self._queue = deque()

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict) -> torch.Tensor:
        self.batches.append(batch)
        brightness = batch["observation.images.image"].mean(dim=(1, 2, 3))  # (B,)
        steps = torch.arange(1, CHUNK + 1, dtype=torch.float32)
        chunk = torch.zeros(len(brightness), CHUNK, ACTION_DIM)
        chunk[..., :6] = (brightness[:, None] * steps)[..., None]
        chunk[..., 6] = torch.sign(batch["observation.state"][:, :1])
        self.chunks += 1
        return chunk

    @torch.no_grad()
    def select_action(self, batch: dict) -> torch.Tensor:
        if not self._queue:
            self._queue.extend(self.predict_action_chunk(batch).transpose(0, 1))  # CHUNK x (B, A)
        return self._queue.popleft()


def preprocessor(batch: dict) -> dict:
    """The state normalised (the role of LeRobot's NormalizerProcessorStep)."""
    return {**batch, "observation.state": (batch["observation.state"] - STATE_MEAN) / STATE_STD}


def postprocessor(action: torch.Tensor) -> torch.Tensor:
    """The arm part un-normalised (the role of LeRobot's UnnormalizerProcessorStep)."""
    return torch.cat([action[..., :6] * ACTION_SCALE, action[..., 6:]], dim=-1)


def make() -> LeRobotPolicy:
    """The factory ``eval --policy lerobot_twin:make`` calls."""
    return LeRobotPolicy(TwinPolicy(), preprocessor=preprocessor, postprocessor=postprocessor)
