"""Camera viewpoint axis: LIBERO-Plus's pose math on the domain's default third-person (agentview) pose.

LIBERO-Plus (``_setup_camera`` of each ``libero_*_manipulation.py`` problem) starts from the domain's default
agentview pose and, for a variant ``(H, V, S, R, E)``:

1. if V != 0: rotates position and orientation about the world-y-parallel axis through the pivot
   (0, 0, 0.8) by -V degrees;
2. rotates position and orientation about the world z axis by H degrees (always, even for H = 0);
3. if S != 100: scales the position's offset from the pivot by S / 100;
4. if R != 0: rotates the orientation only about world z by R degrees; if E != 0, about world y by -E.

After every step positions and quaternions (w, x, y, z) are rounded to 4 decimals; the result is written
before the model compiles, which normalises the quaternion. We write the same numbers (normalised) into
``model.cam_pos`` / ``model.cam_quat`` of the compiled model: agentview is a fixed worldbody camera, read
at every render, so no recompile is needed and the result is the same. The wrist camera is never touched.

Levels are ours (LIBERO-Plus's difficulty labels were assigned empirically and do not grow with the
displacement, docs/perturbations.md); they grow the orbit angle, tilt and distance together.
"""

from __future__ import annotations

import numpy as np

PIVOT = np.array([0.0, 0.0, 0.8])  # LIBERO-Plus's pivot for every domain
AGENTVIEW = "agentview"
# level -> (|H| range deg, V choices deg, S range percent); R = E = 0, as in every LIBERO-Plus camera variant.
LEVEL_RANGES: dict[int, tuple[tuple[int, int], tuple[int, ...], tuple[int, int]]] = {
    1: ((5, 15), (0,), (100, 100)),
    2: ((15, 30), (0,), (100, 115)),
    3: ((30, 45), (0, 15), (115, 130)),
    4: ((45, 60), (15,), (130, 160)),
    5: ((60, 75), (15,), (160, 200)),
}


def _quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (w, x, y, z) quaternions: the rotation ``b`` followed by ``a``.

    ``b`` is normalised first: LIBERO-Plus composes through ``scipy.spatial.transform.Rotation.from_quat``,
    which normalises its (rounded, so not quite unit) input.
    """
    aw, ax, ay, az = a
    bw, bx, by, bz = np.asarray(b, float) / np.linalg.norm(b)
    return np.array(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ]
    )


def _axis_rotation(axis: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """(quaternion wxyz, 3x3 matrix) of a right-handed rotation about a unit ``axis``."""
    half = np.radians(degrees) / 2
    quat = np.array([np.cos(half), *(np.sin(half) * axis)])
    w, x, y, z = quat
    matrix = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    return quat, matrix


_Y, _Z = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0])


def liberoplus_camera_pose(
    pos: np.ndarray, quat_wxyz: np.ndarray, view: tuple[int, int, int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The agentview pose LIBERO-Plus writes for variant ``view = (H, V, S, R, E)`` (module docstring).

    Args:
        pos: default camera position (3,), m, world frame.
        quat_wxyz: default camera orientation (4,), w first.
        view: horizontal orbit deg, vertical orbit deg, distance percent, roll about z deg, tilt about y deg.

    Returns:
        (position (3,), quaternion wxyz (4,)), rounded as LIBERO-Plus rounds them (not normalised).
    """
    horizontal, vertical, scale_percent, roll, elevation = view
    pos, quat = np.asarray(pos, float), np.asarray(quat_wxyz, float)
    if vertical != 0:
        q, m = _axis_rotation(_Y, -vertical)
        pos, quat = np.round(m @ (pos - PIVOT) + PIVOT, 4), np.round(_quat_multiply(q, quat), 4)
    q, m = _axis_rotation(_Z, horizontal)
    pos, quat = np.round(m @ pos, 4), np.round(_quat_multiply(q, quat), 4)
    if scale_percent != 100:
        pos = np.round(PIVOT + (pos - PIVOT) * (scale_percent / 100), 4)
    if roll != 0:
        quat = np.round(_quat_multiply(_axis_rotation(_Z, roll)[0], quat), 4)
    if elevation != 0:
        quat = np.round(_quat_multiply(_axis_rotation(_Y, -elevation)[0], quat), 4)
    return pos, quat


def sample_camera_view(level: int, rng: np.random.Generator) -> tuple[int, int, int, int, int]:
    """A LIBERO-Plus-style (H, V, S, R, E) for our ``level`` (1..5); H in 0..359 as in LIBERO-Plus."""
    (low, high), vertical_choices, (scale_low, scale_high) = LEVEL_RANGES[level]
    magnitude = int(rng.integers(low, high + 1))
    horizontal = magnitude if rng.random() < 0.5 else (360 - magnitude) % 360
    vertical = int(rng.choice(vertical_choices))
    scale = int(rng.integers(scale_low, scale_high + 1))
    return horizontal, vertical, scale, 0, 0


def read_camera_pose(model: object, camera: str = AGENTVIEW) -> tuple[np.ndarray, np.ndarray]:
    """(position, quaternion wxyz) of a camera in a compiled ``mujoco.MjModel`` (copies)."""
    import mujoco

    camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if camera_id < 0:
        raise ValueError(f"the simulator has no camera named {camera!r}")
    return np.array(model.cam_pos[camera_id]), np.array(model.cam_quat[camera_id])


def write_camera_pose(model: object, pos: np.ndarray, quat_wxyz: np.ndarray, camera: str = AGENTVIEW) -> None:
    """Set a fixed camera's pose in a compiled model; the quaternion is normalised, as the compiler does."""
    import mujoco

    camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if camera_id < 0:
        raise ValueError(f"the simulator has no camera named {camera!r}")
    if model.cam_bodyid[camera_id] != 0:
        raise ValueError(
            f"camera {camera!r} is attached to body {model.cam_bodyid[camera_id]}, not the world"
        )
    quat = np.asarray(quat_wxyz, float)
    model.cam_pos[camera_id] = pos
    model.cam_quat[camera_id] = quat / np.linalg.norm(quat)
