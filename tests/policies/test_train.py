"""Training on real LIBERO frames: the loss falls when overfitting, a resumed run is bit-exact, the CLI works.

The demonstration fixture records a few real frames from the LIBERO simulator (LIBERO-Object task 0, init
state 0) with a fixed open-loop action pattern, written with ``policies/demos.py`` (``docs/formats.md``
section 2). Malformed files are written with h5py directly.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vlamergebench.configs import ConfigError
from vlamergebench.policies import checkpoint as ckpt
from vlamergebench.policies.data import DemoError, load_frames
from vlamergebench.policies.model import init_head
from vlamergebench.policies.policy import VLAPolicy
from vlamergebench.policies.registry import make_config
from vlamergebench.policies.train import TrainConfig, prepare_model, train

FRAMES = 16


def _write_demo(path, frames, instruction, convention="opencv"):
    with h5py.File(path, "w") as handle:
        data = handle.create_group("data")
        data.attrs["env_name"] = "LIBERO-Object"
        data.attrs["problem_info"] = json.dumps({"language_instruction": instruction})
        data.attrs["macros_image_convention"] = convention
        demo = data.create_group("demo_0")
        demo.attrs["num_samples"] = len(frames["actions"])
        demo.create_dataset("actions", data=np.asarray(frames["actions"], dtype=np.float64))
        obs = demo.create_group("obs")
        for key, value in frames.items():
            if key != "actions":
                obs.create_dataset(key, data=np.asarray(value))


@pytest.fixture(scope="module")
def real_demo(tmp_path_factory):
    import gymnasium as gym

    import vlamergebench.envs  # noqa: F401 (registers the ids)
    from vlamergebench.policies.demos import DemoWriter

    env = gym.make("vlamergebench/LIBERO-Object-v0", task=0, image_size=96)
    observation, info = env.reset(seed=0, options={"init_state_id": 0})
    frames = {k: [] for k in ("agentview_rgb", "eye_in_hand_rgb", "ee_pos", "ee_ori", "gripper_states")}
    actions, states = [], []
    for step in range(FRAMES):
        action = np.array(
            [0.6 * np.sin(step / 3), 0.5 * np.cos(step / 4), -0.4, 0, 0, 0.1, 1 if step > 8 else -1]
        )
        frames["agentview_rgb"].append(observation["agentview_image"])
        frames["eye_in_hand_rgb"].append(observation["wrist_image"])
        frames["ee_pos"].append(observation["state"][:3])
        frames["ee_ori"].append(observation["state"][3:6])
        frames["gripper_states"].append(observation["state"][6:])
        states.append(env.unwrapped.get_sim_state())
        actions.append(action)
        observation, *_ = env.step(action.astype(np.float32))
    env.close()
    path = tmp_path_factory.mktemp("demos") / "libero_object_0.hdf5"
    problem = {"language_instruction": info["instruction"], "problem_name": "x", "domain_name": "y"}
    with DemoWriter(path, env_name="libero_object/0", problem_info=problem) as writer:
        writer.add_demo(np.array(actions), np.array(states), {k: np.array(v) for k, v in frames.items()})
    return path


@pytest.fixture(scope="module")
def tiny_base(real_demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    losses = []
    config = TrainConfig(role="base", steps=50, batch_size=8, learning_rate=3e-3, augment=False, log_every=5)
    base = train(config, [real_demo], root / "base", policy=make_config("tiny"), progress=False,
                 on_step=lambda step, loss: losses.append(loss))  # fmt: skip
    return base, losses


def test_loss_falls_when_overfitting_real_frames(tiny_base, real_demo):
    base, losses = tiny_base
    assert len(losses) == 50
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    frames = load_frames([real_demo], make_config("tiny"))
    assert len(frames) == FRAMES and frames.images.shape[1:] == (2, 84, 84, 3)
    provenance = base.config["provenance"]
    assert provenance["steps"] == 50 and provenance["head_init_seed"] == 7
    assert provenance["demos"][0]["sha256"] == ckpt.file_sha256(real_demo)
    assert (base.path.with_name("base.work") / "loss.png").stat().st_size > 1000


def test_chunks_pad_with_the_last_action_and_stats_skip_the_gripper(real_demo):
    frames = load_frames([real_demo], make_config("tiny"))
    with h5py.File(real_demo) as handle:
        actions = np.asarray(handle["data/demo_0/actions"], dtype=np.float32)
    np.testing.assert_array_equal(frames.chunks[0], actions[:8])
    np.testing.assert_array_equal(frames.chunks[-1], np.repeat(actions[-1:], 8, axis=0))
    stats = frames.norm_stats(binarize_gripper=True)
    assert stats.action_mask == (True,) * 6 + (False,)
    np.testing.assert_allclose(stats.action_q99[2], -0.4, atol=1e-6)


def test_bad_demo_files_raise_naming_the_field(tmp_path):
    frames = {"actions": np.zeros((3, 6)), "agentview_rgb": np.zeros((3, 8, 8, 3), np.uint8),
              "eye_in_hand_rgb": np.zeros((3, 8, 8, 3), np.uint8), "ee_pos": np.zeros((3, 3)),
              "ee_ori": np.zeros((3, 3)), "gripper_states": np.zeros((3, 2))}  # fmt: skip
    _write_demo(tmp_path / "six.hdf5", frames, "open the drawer")
    with pytest.raises(DemoError, match=r"demo_0/actions: shape \(3, 6\), expected \(T, 7\)"):
        load_frames([tmp_path / "six.hdf5"], make_config("tiny"))
    frames["actions"] = np.zeros((3, 7))
    del frames["ee_ori"]
    _write_demo(tmp_path / "no_ori.hdf5", frames, "open the drawer")
    with pytest.raises(DemoError, match="missing.*ee_ori"):
        load_frames([tmp_path / "no_ori.hdf5"], make_config("tiny"))


def test_opengl_frames_are_turned_upright(real_demo, tmp_path):
    with h5py.File(real_demo) as handle:
        frames = {k: np.asarray(v) for k, v in handle["data/demo_0/obs"].items()}
        frames["actions"] = np.asarray(handle["data/demo_0/actions"])
    upright = load_frames([real_demo], make_config("tiny")).images
    for key in ("agentview_rgb", "eye_in_hand_rgb"):
        frames[key] = frames[key][:, ::-1]
    _write_demo(tmp_path / "opengl.hdf5", frames, "x", convention="opengl")
    np.testing.assert_array_equal(
        load_frames([tmp_path / "opengl.hdf5"], make_config("tiny")).images, upright
    )


def test_experts_of_one_base_start_from_one_head(tiny_base):
    base, _ = tiny_base
    checkpoint = ckpt.CheckpointDir.open(base.path)
    first = prepare_model(TrainConfig(), None, checkpoint).action_head.state_dict()
    second = prepare_model(TrainConfig(lora_seed=5), None, checkpoint).action_head.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    reference = prepare_model(TrainConfig(), None, checkpoint)
    init_head(reference, 7)
    assert all(torch.equal(first[k], reference.action_head.state_dict()[k]) for k in first)
    trained = load_file(str(checkpoint.file(ckpt.ACTION_EXPERT_FILE)))
    assert not torch.equal(
        first["fc2.weight"], trained["action_head.fc2.weight"]
    )  # not the base's trained head
    with pytest.raises(ConfigError, match="head_init_seed 8 differs from the base's recorded 7"):
        prepare_model(TrainConfig(head_init_seed=8), None, checkpoint)


def test_interrupted_training_resumes_bit_exactly(tiny_base, real_demo, tmp_path):
    base, _ = tiny_base
    config = TrainConfig(steps=6, batch_size=4, checkpoint_every=2)
    straight = train(config, [real_demo], tmp_path / "straight", base=base.path, progress=False)
    assert (
        train(config, [real_demo], tmp_path / "resumed", base=base.path, progress=False, stop_after=3) is None
    )
    assert not (tmp_path / "resumed").exists()
    assert json.loads((tmp_path / "resumed.work" / "train_state.json").read_text())["step"] == 3
    resumed = train(config, [real_demo], tmp_path / "resumed", base=base.path, progress=False)
    for name in (ckpt.LORA_FILE, ckpt.ACTION_EXPERT_FILE):
        assert straight.file(name).read_bytes() == resumed.file(name).read_bytes(), name
    with pytest.raises(ConfigError, match="saved run differs"):
        train(TrainConfig(steps=7, batch_size=4), [real_demo], tmp_path / "other", base=base.path,
              work=tmp_path / "resumed.work", progress=False)  # fmt: skip


def test_cli_trains_an_expert_that_drives_predict(tiny_base, real_demo, tmp_path):
    from vlamergebench.cli import main

    base, _ = tiny_base
    out = tmp_path / "object_0"
    argv = ["train", "--base", str(base.path), "--demos", str(real_demo), "--out", str(out), "--steps", "3",
            "--batch-size", "4", "--suite", "libero_object", "--task-id", "0", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    expert = ckpt.CheckpointDir.open(out)
    assert expert.role == "expert" and expert.base_id == base.base_id
    assert expert.config["skill"]["suite"] == "libero_object" and expert.config["skill"]["task_id"] == 0
    assert expert.config["provenance"]["train"]["head_init_seed"] == 7
    policy = VLAPolicy.from_checkpoint(out, base=base.path)
    with h5py.File(real_demo) as handle:
        obs = handle["data/demo_0/obs"]
        state = np.concatenate([obs["ee_pos"][0], obs["ee_ori"][0], obs["gripper_states"][0]])
        observation = {"agentview_image": obs["agentview_rgb"][0], "wrist_image": obs["eye_in_hand_rgb"][0],
                       "state": state, "instruction": expert.instructions()[0]}  # fmt: skip
    assert policy.predict(observation).shape == (8, 7)
    with pytest.raises(FileExistsError):
        main(argv)


def _head_shift(expert, base) -> float:
    head, start = (
        load_file(expert.file(ckpt.ACTION_EXPERT_FILE)),
        load_file(base.file(ckpt.ACTION_EXPERT_FILE)),
    )
    return sum(float((head[k] - start[k]).pow(2).sum()) for k in head if k.startswith("action_head.")) ** 0.5


def test_mergeable_expert_options_keep_proprio_and_stats_and_slow_the_head(tiny_base, real_demo, tmp_path):
    """The default set's expert recipe: head from the base at a low rate, proprio frozen, base statistics."""
    base, _ = tiny_base
    shared = {"steps": 4, "batch_size": 4, "learning_rate": 1e-3, "head_init": "base", "augment": False}
    gentle = TrainConfig(
        **shared, head_learning_rate=1e-6, freeze_proprio_projector=True, norm_stats="base", lora_seed=3
    )
    slow = train(gentle, [real_demo], tmp_path / "gentle", base=base.path, progress=False)
    fast = train(TrainConfig(**shared), [real_demo], tmp_path / "fast", base=base.path, progress=False)

    start, kept = load_file(base.file(ckpt.ACTION_EXPERT_FILE)), load_file(slow.file(ckpt.ACTION_EXPERT_FILE))
    proprio = [k for k in kept if k.startswith("proprio_projector.")]
    assert proprio and all(torch.equal(kept[k], start[k]) for k in proprio)
    assert slow.norm_stats() == base.norm_stats()
    assert 0 < _head_shift(slow, base) < 0.01 * _head_shift(fast, base)
    with pytest.raises(ConfigError, match="experts only"):
        TrainConfig(role="base", norm_stats="base")
