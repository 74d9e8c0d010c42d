"""The fast render profile: decimated copies of installed LIBERO meshes, cached once and reused, the installed
assets untouched; a fast-profile env has the full profile's physics and runs; the profile is part of a run's
settings and env kwargs."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import vlamergebench.envs  # noqa: F401  (registers the ids, chooses the GL backend)
from vlamergebench.envs import fast_meshes
from vlamergebench.envs.fast_meshes import decimated_file, read_msh, read_obj


def _assets() -> Path:
    from libero.libero import get_libero_path

    return Path(get_libero_path("assets"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_textured_mesh_is_decimated_once_into_the_cache_and_reused(tmp_path):
    source = _assets() / "stable_hope_objects" / "tomato_sauce" / "visual" / "textured_vis.msh"
    before = _sha256(source)
    copy = decimated_file(source, cache_dir=tmp_path)
    assert copy.parent == tmp_path and copy.suffix == ".msh"
    original, reduced = read_msh(source), read_msh(copy)
    faces = len(original.faces)
    assert 0.05 * faces <= len(reduced.faces) <= 0.12 * faces  # about KEEP_FRACTION = 0.1 of them
    # every kept vertex is an original one, with its own texture coordinate (the texture stays mapped)
    pairs = {tuple(row) for row in np.hstack([original.positions, original.texcoords])}
    assert all(tuple(row) in pairs for row in np.hstack([reduced.positions, reduced.texcoords]))
    made = copy.stat().st_mtime_ns
    assert decimated_file(source, cache_dir=tmp_path) == copy  # reused, not rewritten
    assert copy.stat().st_mtime_ns == made and [p.name for p in tmp_path.iterdir()] == [copy.name]
    assert _sha256(source) == before


def test_an_untextured_obj_keeps_its_shape_and_a_small_mesh_is_left_alone(tmp_path):
    import importlib.util

    robosuite = importlib.util.find_spec("robosuite").submodule_search_locations[0]  # files only, no import
    panda = Path(robosuite) / "models" / "assets" / "robots" / "panda" / "obj_meshes"
    source = panda / "link5_vis" / "link5_vis_2.obj"
    original = read_obj(source)
    reduced = read_obj(decimated_file(source, textured=False, cache_dir=tmp_path))
    assert reduced.texcoords is None and len(reduced.faces) <= 0.12 * len(original.faces)
    low, high = original.positions.min(0), original.positions.max(0)
    extent = high - low
    assert np.allclose(reduced.positions.min(0), low, atol=0.05 * extent.max())  # the same part, not a blob
    assert np.allclose(reduced.positions.max(0), high, atol=0.05 * extent.max())
    small = panda / "link5_vis" / "link5_vis_0.obj"
    if len(read_obj(small).faces) < fast_meshes.MIN_FACES:
        assert decimated_file(small, cache_dir=tmp_path) == small


def test_bad_mesh_files_are_named(tmp_path):
    broken = tmp_path / "broken.msh"
    broken.write_bytes(np.array([3, 0, 0, 1], np.int32).tobytes() + b"\0" * 8)
    with pytest.raises(ValueError, match=r"broken\.msh: 24 bytes, expected 64"):
        read_msh(broken)


def test_a_fast_env_has_the_full_physics_runs_and_leaves_the_assets_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("VLAMERGEBENCH_CACHE_DIR", str(tmp_path))
    env_id, actions = "vlamergebench/LIBERO-Spatial-v0", np.random.default_rng(0).uniform(-0.5, 0.5, (3, 7))
    full = gym.make(env_id, task=0, image_size=64)
    full.reset(seed=0, options={"init_state_id": 1})
    model = full.unwrapped.sim_env.sim.model._model
    visual = fast_meshes.visual_only_meshes(model)
    xml = full.unwrapped.sim_env.env.model.get_xml()
    sources = {Path(m.get("file")) for m in ET.fromstring(xml).iter("mesh") if m.get("name") in visual}
    hashes = {source: _sha256(source) for source in sources}
    fast = gym.make(env_id, task=0, image_size=64, render_profile="fast")
    observations = {}
    try:
        for name, env in (("full", full), ("fast", fast)):
            env.reset(seed=0, options={"init_state_id": 1})
            for action in actions:
                observations[name], *_ = env.step(action)
        fast_model = fast.unwrapped.sim_env.sim.model._model
        assert fast_model.nmeshface < 0.6 * model.nmeshface
        for field in ("body_mass", "body_inertia", "body_ipos"):
            assert np.array_equal(getattr(model, field), getattr(fast_model, field)), field
        colliding = (model.geom_contype != 0) | (model.geom_conaffinity != 0)  # visual geoms' bounds change
        assert np.array_equal(model.geom_size[colliding], fast_model.geom_size[colliding])
        assert np.array_equal(full.unwrapped.get_sim_state(), fast.unwrapped.get_sim_state())
        assert np.array_equal(observations["full"]["state"], observations["fast"]["state"])
        frame = observations["fast"]["agentview_image"]
        assert frame.shape == (64, 64, 3) and frame.std() > 10  # a rendered scene, not a blank frame
        cached = sorted(path.name for path in (tmp_path / "meshes").iterdir())
        assert cached and len(cached) <= len(sources)
        # the processor a second env gets finds every copy in the cache and writes nothing
        times = {path: path.stat().st_mtime_ns for path in (tmp_path / "meshes").iterdir()}
        fast_meshes.xml_processor(visual)(xml)
        assert {path: path.stat().st_mtime_ns for path in (tmp_path / "meshes").iterdir()} == times
    finally:
        full.close()
        fast.close()
    assert {source: _sha256(source) for source in sources} == hashes
