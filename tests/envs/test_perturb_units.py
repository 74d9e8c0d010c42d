"""Perturbation axes without a simulator: camera pose math, robot offsets, noise kernels, paraphrases, BDDL
layout edits, the config, the fixed variant list and the registered ids."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import load_env_creator
from scipy.spatial.transform import Rotation

import vlamergebench.envs  # noqa: F401  (registers the ids)
from vlamergebench.envs.contract import INSTRUCTION_CHARSET
from vlamergebench.envs.libero import LiberoEnv
from vlamergebench.envs.perturb import camera, language, layout, noise, robot_init, suites
from vlamergebench.envs.perturb.config import AXES, NOISE_KINDS, PerturbationConfig

# LIBERO's default tabletop agentview pose (LIBERO's _setup_camera; LIBERO-Plus perturbs this pose).
TABLETOP_POS = [0.6586131746834771, 0.0, 1.6103500240372423]
TABLETOP_QUAT = [0.6380177736282349, 0.3048497438430786, 0.30484986305236816, 0.6380177736282349]
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def _scipy_pose(view):
    """LIBERO-Plus's camera steps, written independently with scipy rotations as LIBERO-Plus composes them."""
    horizontal, vertical, scale, roll, elevation = view
    pivot = np.array([0, 0, 0.8])

    def rotate(rotation, quat):  # quat wxyz -> composed, rounded
        out = (rotation * Rotation.from_quat([*quat[1:], quat[0]])).as_quat()
        return np.round([out[3], *out[:3]], 4)

    pos, quat = np.array(TABLETOP_POS), np.array(TABLETOP_QUAT)
    if vertical:
        about_y = Rotation.from_rotvec(np.radians(-vertical) * np.array([0, 1, 0]))
        pos, quat = np.round(about_y.apply(pos - pivot) + pivot, 4), rotate(about_y, quat)
    about_z = Rotation.from_euler("z", horizontal, degrees=True)
    pos, quat = np.round(about_z.apply(pos), 4), rotate(about_z, quat)
    if scale != 100:
        pos = np.round(pivot + (pos - pivot) * (scale / 100), 4)
    if roll:
        quat = rotate(Rotation.from_euler("z", roll, degrees=True), quat)
    if elevation:
        quat = rotate(Rotation.from_rotvec(np.radians(-elevation) * np.array([0, 1, 0])), quat)
    return pos, quat


@pytest.mark.parametrize(
    "view",
    [
        (0, 0, 100, 0, 0),
        (30, 0, 100, 0, 0),
        (330, 15, 150, 0, 0),
        (75, 15, 200, 5, -5),
        (285, 0, 115, -10, 8),
    ],
)
def test_camera_pose_is_liberoplus_composition_exactly(view):
    pos, quat = camera.liberoplus_camera_pose(TABLETOP_POS, TABLETOP_QUAT, view)
    expected_pos, expected_quat = _scipy_pose(view)
    np.testing.assert_array_equal(pos, expected_pos)
    np.testing.assert_array_equal(quat, expected_quat)


def test_camera_levels_are_seeded_and_grow():
    magnitudes = {}
    for level in range(1, 6):
        views = [
            camera.sample_camera_view(level, PerturbationConfig(camera=level, seed=s).axis_rng("camera"))
            for s in range(40)
        ]
        again = [
            camera.sample_camera_view(level, PerturbationConfig(camera=level, seed=s).axis_rng("camera"))
            for s in range(40)
        ]
        assert views == again
        (low, high), verticals, (scale_low, scale_high) = camera.LEVEL_RANGES[level]
        horizontal = [min(v[0], 360 - v[0]) for v in views]
        assert all(low <= h <= high for h in horizontal), (level, horizontal)
        assert {v[1] for v in views} <= set(verticals) and all(scale_low <= v[2] <= scale_high for v in views)
        assert len(set(views)) > 10  # seeds give different views
        magnitudes[level] = np.mean(horizontal)
    assert list(magnitudes.values()) == sorted(magnitudes.values())


def test_robot_offsets_have_liberoplus_norms_and_sequence():
    table = robot_init.liberoplus_init_qpos_table()
    assert table.shape == (500, 7)
    norms = np.linalg.norm(table - robot_init.PANDA_HOME_QPOS, axis=1)
    np.testing.assert_allclose(norms, 0.1 * (np.arange(500) // 100 + 1), atol=1e-7)
    legacy = np.random.RandomState(42)  # regenerate the first and last rows independently
    directions = [legacy.randn(7) for _ in range(500)]
    for index in (0, 499):
        direction = directions[index] / np.linalg.norm(directions[index])
        expected = robot_init.PANDA_HOME_QPOS + direction * 0.1 * (index // 100 + 1)
        np.testing.assert_allclose(table[index], expected, atol=5e-9)
    for level in range(1, 6):
        chosen = {robot_init.sample_variant(level, np.random.default_rng(s)) for s in range(30)}
        assert all(100 * (level - 1) < n <= 100 * level for n in chosen) and len(chosen) > 10
    with pytest.raises(ValueError, match="1..500"):
        robot_init.offset_qpos(501)


def _picture(size: int = 224) -> np.ndarray:  # the default LIBERO frame size
    rows, cols = np.mgrid[0:size, 0:size]
    checker = ((rows // 8 + cols // 8) % 2) * 160 + 40
    return np.stack([checker, cols * 255 // size, rows * 255 // size], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noise_kernels_change_pixels_deterministically_and_grow_with_severity(kind):
    image = _picture()
    mild = noise.corrupt(image, kind, 2, np.random.default_rng(0))
    strong = noise.corrupt(image, kind, 10, np.random.default_rng(0))
    assert mild.shape == image.shape and mild.dtype == np.uint8
    np.testing.assert_array_equal(mild, noise.corrupt(image, kind, 2, np.random.default_rng(0)))
    change = [np.abs(x.astype(int) - image).mean() for x in (mild, strong)]
    assert 0 < change[0] < change[1], change
    if kind in ("motion_blur", "fog", "glass_blur"):  # the kernels with random draws
        assert not np.array_equal(strong, noise.corrupt(image, kind, 10, np.random.default_rng(1)))


def test_fixed_noise_variants_use_every_kernel_twice():
    kinds = [noise.default_kind(v.seed, v.level) for v in suites.VARIANTS if v.axis == "noise"]
    assert sorted(kinds) == sorted(NOISE_KINDS * 2)


def test_noise_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown noise kind"):
        noise.corrupt(_picture(), "snow", 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="1..10"):
        noise.corrupt(_picture(), "fog", 11, np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        noise.corrupt(_picture().astype(float), "fog", 2, np.random.default_rng(0))


def _instructions() -> list[str]:
    return [task["instruction"] for suite in SUITES for task in LiberoEnv.list_tasks(suite)]


def test_paraphrases_cover_every_task_fit_the_space_and_drift_with_level():
    space = gym.spaces.Text(256, min_length=1, charset=INSTRUCTION_CHARSET)
    overlap = {level: [] for level in range(1, 6)}
    for instruction in _instructions():
        assert language.paraphrase(instruction, 0, np.random.default_rng(0)) == instruction
        words = set(instruction.split())
        for level in range(1, 6):
            for seed in (0, 1):
                rng = lambda s=seed, lv=level: np.random.default_rng([s, lv])  # noqa: E731
                text = language.paraphrase(instruction, level, rng())
                assert text == language.paraphrase(instruction, level, rng())
                assert text != instruction and text in space, (instruction, level, text)
                overlap[level].append(len(words & set(text.split())) / len(words))
    means = [np.mean(overlap[level]) for level in range(1, 6)]
    assert means[0] > means[2] > means[4], means  # framing < reworded objects < context and distraction


def test_liberoplus_language_source_reads_a_user_install(tmp_path, monkeypatch):
    task = "pick_up_the_alphabet_soup_and_place_it_in_the_basket"
    bddl_dir = tmp_path / "libero" / "libero" / "bddl_files" / "libero_object"
    bddl_dir.mkdir(parents=True)
    (bddl_dir / f"{task}_language_7.bddl").write_text(
        "(define (problem X)\n (:language grab   the soup can)\n)"
    )
    classification = tmp_path / "libero" / "libero" / "benchmark" / "task_classification.json"
    classification.parent.mkdir(parents=True)
    entries = [
        {"id": 1, "name": f"{task}_language_7", "category": "Language Instructions", "difficulty_level": 2}
    ]
    classification.write_text(json.dumps({"libero_object": entries}))
    assert language.liberoplus_rewrite("libero_object", task, 2, 0, str(tmp_path)) == "grab the soup can"
    with pytest.raises(ValueError, match="no language variant"):
        language.liberoplus_rewrite("libero_object", task, 3, 0, str(tmp_path))
    monkeypatch.delenv("LIBERO_PLUS_ROOT", raising=False)
    with pytest.raises(FileNotFoundError, match="LIBERO_PLUS_ROOT"):
        language.liberoplus_rewrite("libero_object", task, 2, 0, None)
    monkeypatch.setenv("LIBERO_PLUS_ROOT", str(tmp_path))
    assert language.liberoplus_rewrite("libero_object", task, 2, 5, None) == "grab the soup can"


def _bddl(suite: str, task_id: int) -> tuple[str, str]:
    env = LiberoEnv(suite, task_id)
    with open(env._simulator_kwargs()["bddl_file_name"], encoding="utf-8") as file:
        return file.read(), env.instruction


@pytest.mark.parametrize("suite", SUITES)
def test_layout_edits_every_task(suite):
    for task_id in range(10):
        text, instruction = _bddl(suite, task_id)
        original = layout.parse_sexpr(text)
        assert layout.parse_sexpr(layout.format_sexpr(original)) == original
        for level in range(1, 6):
            rng = PerturbationConfig(layout=level, seed=task_id).axis_rng("layout")
            new, change = layout.perturb_bddl(text, instruction, level, rng)
            again, _ = layout.perturb_bddl(
                text, instruction, level, PerturbationConfig(layout=level, seed=task_id).axis_rng("layout")
            )
            assert new == again
            shifts = np.linalg.norm(list(change.moved.values()), axis=1)
            np.testing.assert_allclose(shifts, layout.JITTER_M_PER_LEVEL * level, atol=2e-4)
            assert len(change.distractors) == layout.DISTRACTORS[level]
            assert all(
                f"{name} - {category}" in new.replace("\n", " ")
                for name, category in change.distractors.items()
            )
            assert all(category not in text for category in change.distractors.values())
            assert (":yaw_rotation" in new) or level not in layout.YAW_DEG
            problem = layout.parse_sexpr(new)  # still one well-formed problem with the same goal
            assert [x for x in problem if x[:1] == [":goal"]] == [x for x in original if x[:1] == [":goal"]]


def test_every_distractor_category_loads_from_the_installed_assets():
    from libero.libero.envs.objects import OBJECTS_DICT

    for category in layout.DISTRACTOR_POOL:
        assert OBJECTS_DICT[category](name=f"{category}_1").horizontal_radius > 0  # parses the model file


def test_config_validates_and_round_trips():
    config = PerturbationConfig(camera=2, light=5, seed=7, noise_kind="fog")
    assert PerturbationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert config.active_axes() == {"camera": 2, "light": 5}
    with pytest.raises(ValueError, match=r"perturbation: unknown field\(s\) \['brightness'\]"):
        PerturbationConfig.from_dict({"brightness": 2})
    for bad in ({"camera": 6}, {"light": True}, {"seed": -1}, {"robot_init": 1, "robot_init_clean": 1},
                {"camera": 1, "camera_view": [10, 0, 100, 0, 0]}, {"noise_kind": "snow"},
                {"language_source": "web"}, {"robot_init_variant": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            PerturbationConfig.from_dict(bad)
    # Seeding contract: an axis draws the same values whatever it is composed with.
    alone = PerturbationConfig(camera=3, seed=4).axis_rng("camera").random(5)
    composed = PerturbationConfig(camera=3, light=2, layout=5, seed=4).axis_rng("camera").random(5)
    np.testing.assert_array_equal(alone, composed)


def test_variant_list_is_fixed_and_resolvable():
    assert len(suites.VARIANTS) == 7 * 5 * 2
    labels = [v.label for v in suites.VARIANTS]
    assert len(set(labels)) == len(labels) and {v.axis for v in suites.VARIANTS} == set(AXES)
    assert suites.resolve_variant("light-L4-s1") == suites.resolve_variant(labels.index("light-L4-s1"))
    assert suites.resolve_variant("light-L4-s1").config() == PerturbationConfig(light=4, seed=1)
    for bad in ("light-L9-s0", 70, -1, True, 2.0):
        with pytest.raises(ValueError):
            suites.resolve_variant(bad)
    rows = suites.list_variants("libero_goal")
    assert len(rows) == 10 * 70 and rows[0]["init_state_id"] == 0
    assert {(r["task_id"], r["variant"]) for r in rows} == {(t, v) for t in range(10) for v in labels}
    with pytest.raises(ValueError, match="no perturbed suite"):
        suites.list_variants("libero_90")


@pytest.mark.parametrize("suite", SUITES)
def test_perturbed_ids_are_registered_with_base_limits_and_list_tasks(suite):
    base = next(s for s in gym.registry.values() if s.kwargs == {"suite": suite} and "Perturbed" not in s.id)
    spec = gym.spec(base.id.replace("LIBERO-", "LIBERO-Perturbed-"))
    assert spec.max_episode_steps == base.max_episode_steps and spec.kwargs == {"suite": suite}
    tasks = load_env_creator(spec.entry_point).list_tasks(
        **spec.kwargs
    )  # the catalogue hook, as a CLI finds it
    assert [t["task_id"] for t in tasks] == list(range(10)) and {t["variants"] for t in tasks} == {70}


def test_factory_rejects_bad_arguments_before_building():
    make = suites.make_perturbed_libero
    with pytest.raises(ValueError, match="exactly one of variant"):
        make("libero_object", 0)
    with pytest.raises(ValueError, match="exactly one of variant"):
        make("libero_object", 0, variant=0, perturbation={"light": 1})
    with pytest.raises(ValueError, match="unknown perturbation variant"):
        make("libero_object", 0, variant="light-high")
    from vlamergebench.envs.perturb.env import PerturbedLiberoEnv

    with pytest.raises(ValueError, match="wrappers"):
        PerturbedLiberoEnv("libero_object", 0, perturbation={"noise": 2})


def test_the_spec_names_the_wrapper_stack_and_rebuilds_it():
    # Building the stack reads BDDL and instruction only; the simulator is built on first reset.
    env = gym.make(
        "vlamergebench/LIBERO-Perturbed-Object-v0",
        task=0,
        perturbation={"noise": 2, "language": 1, "camera": 1},
    )
    stack = [(w.name, dict(w.kwargs)) for w in env.spec.additional_wrappers]
    assert stack[:2] == [
        ("InstructionRewrite", {"level": 1, "seed": 0, "source": "ours", "liberoplus_root": None}),
        ("SensorNoise", {"level": 2, "seed": 0, "kind": None, "image_key": "agentview_image"}),
    ]
    rebuilt = gym.make(env.spec)  # from the recorded spec alone
    assert (
        str(rebuilt) == str(env) and json.loads(env.spec.to_json())["kwargs"]["perturbation"]["camera"] == 1
    )
    assert env.unwrapped.perturbation == PerturbationConfig(
        camera=1
    )  # the scene env never sees noise/language


def test_noise_pixel_sizes_are_liberoplus_at_256_px_and_scale_with_the_frame():
    from scipy.ndimage import gaussian_filter

    def blurred(image, sigma):  # LIBERO-Plus's gaussian_blur (skimage's gaussian: scipy, nearest, truncate 4)
        smooth = gaussian_filter(image / 255.0, sigma=(sigma, sigma, 0), mode="nearest", truncate=4.0)
        return (np.clip(smooth, 0, 1) * 255).astype(np.uint8)

    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(
        noise.corrupt(_picture(256), "gaussian_blur", 6, rng), blurred(_picture(256), 6)
    )
    np.testing.assert_array_equal(
        noise.corrupt(_picture(128), "gaussian_blur", 6, rng), blurred(_picture(128), 3)
    )
