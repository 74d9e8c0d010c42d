"""LIBERO-layout demo files: schema, upright images, proprio, layouts, crash safety, errors (h5py only)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from vlamergebench.policies.demos import LIBERO_LAYOUT, DemoError, DemoFile, DemoLayout, DemoWriter

PROBLEM = {"problem_name": "libero_tabletop_manipulation", "domain_name": "robosuite",
           "language_instruction": "open the middle drawer of the cabinet"}  # fmt: skip


def _demo_arrays(steps: int, seed: int, size: int = 8) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "actions": rng.uniform(-1, 1, (steps, 7)),
        "states": rng.normal(size=(steps, 12)),
        "obs": {
            "agentview_rgb": rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 255, (steps, size, size, 3), dtype=np.uint8),
            "ee_pos": rng.normal(size=(steps, 3)),
            "ee_ori": rng.normal(size=(steps, 3)),
            "gripper_states": rng.normal(size=(steps, 2)),
            "joint_states": rng.normal(size=(steps, 7)),
        },
    }


def test_round_trip_follows_the_documented_schema(tmp_path):
    path = tmp_path / "demos.hdf5"
    demos = [_demo_arrays(5, 0), _demo_arrays(3, 1)]
    with DemoWriter(path, env_name="libero_goal/open", problem_info=PROBLEM, env_args={"image_size": 8},
                    provenance={"seed": 7}) as writer:  # fmt: skip
        for i, demo in enumerate(demos):
            assert writer.add_demo(**demo, attrs={"init_state_id": i}) == f"demo_{i}"
        assert not path.exists() and writer.partial_path.exists()  # published only on close
    assert path.exists() and not writer.partial_path.exists()

    with h5py.File(path, "r") as handle:  # the raw layout, as LIBERO's own tools would see it
        data = handle["data"]
        assert (data.attrs["num_demos"], data.attrs["total"]) == (2, 8)
        assert json.loads(data.attrs["problem_info"]) == PROBLEM
        assert data.attrs["macros_image_convention"] == "opencv"
        assert json.loads(data.attrs["vlamergebench"]) == {"seed": 7, "layout": LIBERO_LAYOUT.to_dict()}
        demo = data["demo_1"]
        assert demo.attrs["num_samples"] == 3 and demo.attrs["init_state_id"] == 1
        assert demo["actions"].shape == (3, 7) and demo["actions"].dtype == np.float64
        assert demo["states"].shape == (3, 12)
        assert list(demo["dones"][()]) == [0, 0, 1] and list(demo["rewards"][()]) == [0, 0, 1]
        assert demo["obs/agentview_rgb"].dtype == np.uint8 and demo["obs/agentview_rgb"].shape == (3, 8, 8, 3)

    with DemoFile(path) as reader:
        assert reader.instruction == PROBLEM["language_instruction"] and len(reader) == 2
        assert reader.env_args == {"image_size": 8}
        read = list(reader)
    for original, loaded in zip(demos, read, strict=True):
        np.testing.assert_array_equal(loaded.actions, original["actions"])
        np.testing.assert_array_equal(loaded.states, original["states"])
        expected_proprio = np.concatenate(
            [original["obs"][k] for k in ("ee_pos", "ee_ori", "gripper_states")], 1
        )
        np.testing.assert_allclose(loaded.proprio, expected_proprio.astype(np.float32))
        steps = list(loaded.steps())
        assert len(steps) == len(original["actions"])
        assert set(steps[0]) == {"agentview_image", "wrist_image", "state", "action"}
        assert steps[0]["state"].shape == (8,) and steps[0]["state"].dtype == np.float32
        np.testing.assert_array_equal(steps[-1]["wrist_image"], original["obs"]["eye_in_hand_rgb"][-1])


def test_libero_opengl_files_are_read_upright(tmp_path):
    """LIBERO's own files store rows bottom-up and may lack our attributes."""
    path = tmp_path / "libero_official.hdf5"
    demo = _demo_arrays(2, 3)
    with h5py.File(path, "w") as handle:
        data = handle.create_group("data")
        data.attrs["problem_info"] = json.dumps(PROBLEM)
        data.attrs["macros_image_convention"] = "opengl"
        group = data.create_group("demo_0")
        group.create_dataset("actions", data=demo["actions"])
        for key, value in demo["obs"].items():
            group.create_dataset(f"obs/{key}", data=value)
    with DemoFile(path) as reader:
        loaded = reader.read("demo_0")
    np.testing.assert_array_equal(loaded.images()["agentview_image"], demo["obs"]["agentview_rgb"][:, ::-1])
    assert loaded.states is None


def test_other_families_use_their_own_layout(tmp_path):
    layout = DemoLayout(cameras={"front_rgb": "front_image"}, proprio=("joint_states",))
    assert DemoLayout.from_dict(layout.to_dict()) == layout
    rng = np.random.default_rng(0)
    obs = {
        "front_rgb": rng.integers(0, 255, (4, 6, 6, 3), dtype=np.uint8),
        "joint_states": rng.normal(size=(4, 6)),
    }
    with DemoWriter(tmp_path / "so101.hdf5", env_name="so101", problem_info=PROBLEM, layout=layout) as writer:
        writer.add_demo(rng.normal(size=(4, 6)), rng.normal(size=(4, 20)), obs)
    with DemoFile(tmp_path / "so101.hdf5") as reader:  # the layout travels with the file
        demo = reader.read("demo_0")
    assert reader.layout == layout
    assert demo.proprio.shape == (4, 6) and set(next(demo.steps())) == {"front_image", "state", "action"}
    with pytest.raises(DemoError, match=r"DemoLayout: unknown field\(s\) \['camera'\]"):
        DemoLayout.from_dict({"camera": {}})


def test_interrupted_writing_never_publishes_and_resumes(tmp_path):
    path = tmp_path / "demos.hdf5"
    with (
        pytest.raises(RuntimeError, match="simulated crash"),
        DemoWriter(path, env_name="x", problem_info=PROBLEM) as w,
    ):
        w.add_demo(**_demo_arrays(3, 0))
        raise RuntimeError("simulated crash")
    assert not path.exists() and w.partial_path.exists()
    with DemoWriter(path, env_name="x", problem_info=PROBLEM, resume=True) as writer:
        assert writer.num_demos == 1
        writer.add_demo(**_demo_arrays(2, 1))
    with DemoFile(path) as reader:
        assert reader.demo_names == ["demo_0", "demo_1"] and [len(d) for d in reader] == [3, 2]


def test_bad_input_names_the_field(tmp_path):
    with pytest.raises(DemoError, match="language_instruction"):
        DemoWriter(tmp_path / "a.hdf5", env_name="x", problem_info={})
    writer = DemoWriter(tmp_path / "a.hdf5", env_name="x", problem_info=PROBLEM)
    demo = _demo_arrays(3, 0)
    del demo["obs"]["ee_ori"]
    with pytest.raises(DemoError, match="obs lacks \\['ee_ori'\\]"):
        writer.add_demo(**demo)
    demo = _demo_arrays(3, 0)
    demo["states"] = demo["states"][:2]
    with pytest.raises(DemoError, match="states has shape \\(2, 12\\), expected \\(3, ...\\)"):
        writer.add_demo(**demo)
    demo = _demo_arrays(3, 0)
    demo["obs"]["agentview_rgb"] = demo["obs"]["agentview_rgb"].astype(np.float32)
    with pytest.raises(DemoError, match="obs/agentview_rgb is float32"):
        writer.add_demo(**demo)
    writer.abort()
    (tmp_path / "empty.hdf5").write_bytes(b"")
    with pytest.raises(OSError):
        DemoFile(tmp_path / "empty.hdf5")
    with h5py.File(tmp_path / "nodata.hdf5", "w"):
        pass
    with pytest.raises(DemoError, match="no /data group"):
        DemoFile(tmp_path / "nodata.hdf5")
