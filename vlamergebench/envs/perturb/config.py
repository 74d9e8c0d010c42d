"""What to perturb: one frozen config with a level per axis, and the seeding contract shared by the axes.

Seeding contract: every random choice of axis ``a`` at level ``L`` comes from
``numpy.random.default_rng(SeedSequence([seed, AXIS_IDS[a], L]))``. An axis therefore draws the same values
whichever other axes it is composed with, and the same ``(seed, level)`` always gives the same scene and the
same pixels. ``AXIS_IDS`` are fixed integers (never ``hash()``, which changes between processes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlamergebench.configs import from_mapping

# The seven axes of LIBERO-Plus (arXiv 2510.13626), in its order, under our names.
AXES = ("camera", "robot_init", "language", "light", "background", "noise", "layout")
# Our second robot-init mode: the same joint offsets without LIBERO-Plus's stale-controller drift.
EXTRA_AXES = ("robot_init_clean",)
ALL_AXES = AXES + EXTRA_AXES
AXIS_IDS = {axis: index + 1 for index, axis in enumerate(ALL_AXES)}  # part of the seeding contract: frozen
MAX_LEVEL = 5
NOISE_KINDS = ("motion_blur", "gaussian_blur", "zoom_blur", "fog", "glass_blur")  # LIBERO-Plus's order
LANGUAGE_SOURCES = ("ours", "liberoplus")
# LIBERO-Plus's camera parameter ranges (H, V, S, R, E): degrees, degrees, percent, degrees, degrees.
CAMERA_VIEW_FIELDS = ("horizontal_deg", "vertical_deg", "scale_percent", "roll_deg", "elevation_deg")


def _check_int(name: str, value: Any, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"perturbation field {name!r} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"perturbation field {name!r} must be in {bound}, got {value}")


@dataclass(frozen=True)
class PerturbationConfig:
    """Levels (0 = identity, 1..5) per axis, the seed, and explicit overrides for exact LIBERO-Plus variants.

    Attributes:
        camera: third-person camera pose level (:mod:`.camera`).
        robot_init: robot initial joints, LIBERO-Plus-compatible mode with its controller drift.
        robot_init_clean: the same joint offsets applied cleanly (exclusive with ``robot_init``).
        language: instruction rewrite level (:mod:`.language`).
        light: MuJoCo light parameter level (:mod:`.light`).
        background: table/wall/floor texture level (:mod:`.background`).
        noise: third-person sensor-noise level (:mod:`.noise`).
        layout: object placement jitter and distractor level (:mod:`.layout`).
        seed: the perturbation seed (non-negative), see the module docstring.
        noise_kind: one of ``NOISE_KINDS``; None picks ``NOISE_KINDS[(seed + noise) % 5]``.
        camera_view: an exact LIBERO-Plus camera tuple (H, V, S, R, E) instead of a sampled one; with it
            ``camera`` must stay 0.
        robot_init_variant: LIBERO-Plus's ``MountedPanda<N>`` (1..500) instead of a sampled one; with it both
            robot levels stay 0 and ``robot_init_variant_mode`` names the mode.
        robot_init_variant_mode: ``"robot_init"`` (LIBERO-Plus-compatible) or ``"robot_init_clean"``.
        language_source: ``"ours"`` (our paraphrase generator) or ``"liberoplus"`` (a user's LIBERO-Plus).
        liberoplus_root: where that LIBERO-Plus lives; None reads ``$LIBERO_PLUS_ROOT``.
    """

    camera: int = 0
    robot_init: int = 0
    robot_init_clean: int = 0
    language: int = 0
    light: int = 0
    background: int = 0
    noise: int = 0
    layout: int = 0
    seed: int = 0
    noise_kind: str | None = None
    camera_view: tuple[int, int, int, int, int] | None = None
    robot_init_variant: int | None = None
    robot_init_variant_mode: str = "robot_init"
    language_source: str = "ours"
    liberoplus_root: str | None = None

    def __post_init__(self) -> None:
        for axis in ALL_AXES:
            _check_int(axis, getattr(self, axis), 0, MAX_LEVEL)
        _check_int("seed", self.seed, 0, None)
        if self.robot_init and self.robot_init_clean:
            raise ValueError("robot_init and robot_init_clean are two modes of one axis: set at most one")
        if self.noise_kind is not None and self.noise_kind not in NOISE_KINDS:
            raise ValueError(f"noise_kind must be None or one of {NOISE_KINDS}, got {self.noise_kind!r}")
        if self.language_source not in LANGUAGE_SOURCES:
            raise ValueError(
                f"language_source must be one of {LANGUAGE_SOURCES}, got {self.language_source!r}"
            )
        if self.camera_view is not None:
            view = tuple(self.camera_view)
            if len(view) != len(CAMERA_VIEW_FIELDS):
                raise ValueError(f"camera_view must be {CAMERA_VIEW_FIELDS}, got {self.camera_view!r}")
            for name, value in zip(CAMERA_VIEW_FIELDS, view, strict=True):
                _check_int(f"camera_view.{name}", value, -360, 360)
            if self.camera:
                raise ValueError("camera_view gives the camera pose explicitly: leave the camera level at 0")
            object.__setattr__(self, "camera_view", tuple(int(v) for v in view))
        if self.robot_init_variant is not None:
            _check_int("robot_init_variant", self.robot_init_variant, 1, 500)
            if self.robot_init or self.robot_init_clean:
                raise ValueError(
                    "robot_init_variant picks the joints explicitly: leave the robot levels at 0"
                )
        if self.robot_init_variant_mode not in ("robot_init", "robot_init_clean"):
            raise ValueError(
                "robot_init_variant_mode must be 'robot_init' or 'robot_init_clean', "
                f"got {self.robot_init_variant_mode!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "perturbation") -> PerturbationConfig:
        """Build from a plain dict (JSON); unknown keys raise, listing the valid ones."""
        return from_mapping(cls, data, where)

    def to_dict(self) -> dict[str, Any]:
        """Every field, defaults written out, JSON-ready."""
        data = dataclasses.asdict(self)
        if data["camera_view"] is not None:
            data["camera_view"] = list(data["camera_view"])
        return data

    def active_axes(self) -> dict[str, int]:
        """Axis -> level of every axis that changes something (explicit overrides count, as level 0)."""
        active = {axis: getattr(self, axis) for axis in ALL_AXES if getattr(self, axis)}
        if self.camera_view is not None:
            active["camera"] = 0
        if self.robot_init_variant is not None:
            active[self.robot_init_variant_mode] = 0
        return active

    def axis_rng(self, axis: str) -> np.random.Generator:
        """The generator of ``axis`` at its level (the seeding contract of this module)."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, AXIS_IDS[axis], getattr(self, axis)]))


def add_to_info(info: Mapping[str, Any], axis: str, level: int, params: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``info`` whose ``info["perturbation"]`` also names ``axis`` (its level and parameters)."""
    perturbation = dict(info.get("perturbation") or {"variant": None, "seed": None})
    perturbation["axes"] = {**(perturbation.get("axes") or {}), axis: level}
    perturbation["params"] = {**(perturbation.get("params") or {}), axis: dict(params)}
    return {**info, "perturbation": perturbation}
