"""The LeRobot adapter (``vlamergebench/eval/lerobot_policy.py``) against a twin of LeRobot's policy API.

LeRobot itself is not installed here (it cannot share a venv with the project's torch pin: docs/so101.md), so
what stays untested is LeRobot's own side: real ``PreTrainedPolicy`` subclasses and
``make_pre_post_processors`` pipelines. The twin (``lerobot_twin.py``) implements the surface the adapter
calls, as LeRobot documents it; ``test_eval_command.py`` runs it through ``eval --policy`` on LIBERO.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lerobot_twin  # noqa: E402

from vlamergebench.eval.lerobot_policy import LeRobotPolicy  # noqa: E402
from vlamergebench.eval.policy import PolicyContractError  # noqa: E402

torch.set_num_threads(1)


def _observation(seed: int = 0) -> dict:
    generator = np.random.default_rng(seed)
    return {
        "agentview_image": generator.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "wrist_image": generator.integers(0, 256, (6, 5, 3), dtype=np.uint8),
        "state": generator.normal(size=8).astype(np.float32),
        "instruction": "put the bowl on the plate",
    }


def test_the_batch_has_lerobots_keys_layout_and_libero_frames():
    observation = _observation()
    batch = LeRobotPolicy(lerobot_twin.TwinPolicy()).batch(observation)
    assert sorted(batch) == [
        "observation.images.image",
        "observation.images.image2",
        "observation.state",
        "task",
    ]
    image = batch["observation.images.image"]
    assert image.shape == (1, 3, 6, 5) and image.dtype == torch.float32
    frame = observation["agentview_image"]
    for row, column, channel in [
        (0, 0, 0),
        (2, 1, 2),
        (5, 4, 1),
    ]:  # columns reversed: LeRobot's 180-degree frame
        assert float(image[0, channel, row, column]) == pytest.approx(frame[row, 4 - column, channel] / 255)
    plain = LeRobotPolicy(lerobot_twin.TwinPolicy(), mirror_images=False).batch(observation)
    assert torch.equal(plain["observation.images.image2"][0].permute(1, 2, 0) * 255,
                       torch.from_numpy(observation["wrist_image"]).float())  # fmt: skip
    assert torch.equal(batch["observation.state"], torch.from_numpy(observation["state"])[None])
    assert batch["task"] == ["put the bowl on the plate"]


def test_predict_runs_the_processors_around_select_action_and_reset_drops_the_queue():
    adapter = lerobot_twin.make()
    twin = adapter.policy
    observation = _observation(1)
    brightness = float(adapter.batch(observation)["observation.images.image"].mean())
    actions = [adapter.predict(observation) for _ in range(4)]
    assert [a.shape for a in actions] == [(1, 7)] * 4 and twin.chunks == 2  # 3 queued actions per chunk
    for step, action in zip([1, 2, 3, 1], actions, strict=True):  # un-normalised by the postprocessor
        np.testing.assert_allclose(action[0, :6], brightness * step * lerobot_twin.ACTION_SCALE, rtol=1e-6)
    normalised = (observation["state"][0] - lerobot_twin.STATE_MEAN) / lerobot_twin.STATE_STD
    assert float(twin.batches[0]["observation.state"][0, 0]) == pytest.approx(
        normalised
    )  # the preprocessor ran
    assert actions[0][0, 6] == np.sign(normalised)
    adapter.reset()
    adapter.predict(observation)
    assert twin.chunks == 3  # the queue was dropped: a new episode starts a new chunk


def test_what_is_not_a_lerobot_policy_is_refused():
    with pytest.raises(
        PolicyContractError, match=r"object is not a LeRobot policy: it lacks \['select_action', 'reset'\]"
    ):
        LeRobotPolicy(object())
    adapter = LeRobotPolicy(lerobot_twin.TwinPolicy())
    with pytest.raises(KeyError, match="observation lacks 'wrist_image'"):
        adapter.predict({k: v for k, v in _observation().items() if k != "wrist_image"})


def test_the_adapter_never_imports_lerobot():
    script = (
        "import sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'lerobot':\n"
        "            raise ImportError('lerobot was imported')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "import vlamergebench.eval.lerobot_policy\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
