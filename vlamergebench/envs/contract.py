"""The contract every vlamergebench env family follows, in one place.

Ids, the keyword arguments of ``gymnasium.make`` that every family accepts, the reset options, the
instruction space and the chunkable rendering protocol are declared here; the families (``libero.py``,
``perturb/``, ``so101.py``, ``aloha.py``, ``robotwin.py``) import them instead of writing their own.
``tests/envs/test_contract.py`` runs Gymnasium's ``check_env`` and a same-seed determinism check over every
registered id. Light on purpose (Gymnasium and numpy only): the catalogue imports it to register the ids.

Observations are a ``Dict`` with one upright ``uint8 (S, S, 3)`` entry per camera, ``state`` (``float32``
proprioception) and ``instruction`` (:func:`instruction_space`); ``info`` carries :data:`INFO_KEYS`. Success
terminates the episode with reward 1; truncation is ``TimeLimit``'s (the registered ``max_episode_steps``).
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import register as _gym_register

NAMESPACE = "vlamergebench"

# Keyword arguments of gymnasium.make(id, ...) that every family accepts, with one meaning everywhere:
# task (int id in the family's order, or the task's name), image_size (square side of every camera image, in
# pixels), camera_rendering (False: physics-only steps whose camera entries repeat the last frame) and
# render_mode (None or "rgb_array"). Families add their own after these.
COMMON_MAKE_KWARGS = ("task", "image_size", "camera_rendering", "render_mode")
RENDER_MODES = ("rgb_array",)

# reset(seed=s, options={"init_state_id": k}) starts the episode from the family's k-th fixed start (LIBERO's
# init state, a gym-aloha layout, a RoboTwin protocol episode, an SO-101 twin layout); without it the start
# is drawn from self.np_random.
RESET_OPTIONS = ("init_state_id",)

# The keys every family's info dict carries (families add their own).
INFO_KEYS = ("is_success", "task", "task_id", "suite", "instruction", "init_state_id")

# One instruction space for every family: printable ASCII plus the typographic quotes and dashes found in
# LIBERO's and RoboTwin's instructions; RoboTwin's generated instructions need the 512 characters.
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + string.punctuation + " ’‘“”–—"
INSTRUCTION_MAX_LENGTH = 512


def env_id(name: str, version: int = 0) -> str:
    """The registered id of env ``name`` at ``version``: ``vlamergebench/<name>-v<version>``.

    A change of behaviour (settle steps, an image-size default, a step limit) bumps the version, so the
    results store never mixes two behaviours under one id.
    """
    return f"{NAMESPACE}/{name}-v{version}"


def register(
    name: str, entry_point: str, max_episode_steps: int, kwargs: Mapping[str, Any], version: int = 0
) -> str:
    """Register ``name`` in Gymnasium's registry by entry-point string (imports nothing); returns the id."""
    registered = env_id(name, version)
    _gym_register(
        id=registered, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=dict(kwargs)
    )
    return registered


def registered_ids() -> list[str]:
    """Every registered ``vlamergebench/*`` id, sorted."""
    from gymnasium.envs.registration import registry

    return sorted(env for env in registry if env.startswith(f"{NAMESPACE}/"))


# --- make keyword arguments -------------------------------------------------------------------------------
def check_image_size(image_size: Any, *, allow_none: bool = False) -> int | None:
    """``image_size`` if it is a positive int (or None where ``allow_none``); otherwise ``ValueError``."""
    if image_size is None and allow_none:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int (pixels), got {image_size!r}")
    return int(image_size)


def check_render_mode(render_mode: str | None) -> str | None:
    """``render_mode`` if it is None or one of :data:`RENDER_MODES`; otherwise ``ValueError``."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be None or one of {list(RENDER_MODES)}, got {render_mode!r}")
    return render_mode


# --- reset options ----------------------------------------------------------------------------------------
def reset_options(options: Mapping[str, Any] | None, valid: tuple[str, ...] = RESET_OPTIONS) -> dict:
    """A copy of Gymnasium's ``reset(options=...)``; an unknown key raises, naming the valid ones."""
    options = dict(options or {})
    unknown = set(options) - set(valid)
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)}; valid options: {sorted(valid)}")
    return options


def check_init_state_id(init_state_id: Any, count: int | None, where: str) -> int:
    """``init_state_id`` as an int in ``0..count - 1`` (any non-negative int when ``count`` is None).

    Args:
        init_state_id: The value of ``options["init_state_id"]``.
        count: How many fixed starts the task has, or None for an unbounded set (the SO-101 twin's layouts).
        where: The task, for the message (e.g. ``libero_object/pick_up_the_...``).

    Raises:
        ValueError: naming the value and the valid range.
    """
    if isinstance(init_state_id, bool) or not isinstance(init_state_id, (int, np.integer)):
        raise ValueError(f"init_state_id must be an int, got {init_state_id!r}")
    if count is None and init_state_id < 0:
        raise ValueError(f"init_state_id must be a non-negative int for {where}, got {init_state_id}")
    if count is not None and not 0 <= init_state_id < count:
        raise ValueError(
            f"init_state_id {init_state_id} is out of range for {where}: valid ids are 0..{count - 1}"
        )
    return int(init_state_id)


# --- instruction ------------------------------------------------------------------------------------------
def instruction_space() -> spaces.Text:
    """The ``instruction`` entry of every family's observation space."""
    return spaces.Text(INSTRUCTION_MAX_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET)


def check_instruction(instruction: str, where: str) -> str:
    """``instruction`` if it fits :func:`instruction_space`; otherwise ``ValueError`` naming what does not."""
    outside = sorted(set(instruction) - set(INSTRUCTION_CHARSET))
    if not 1 <= len(instruction) <= INSTRUCTION_MAX_LENGTH or outside:
        raise ValueError(
            f"instruction of {where} does not fit the instruction space (1..{INSTRUCTION_MAX_LENGTH} "
            f"characters of printable ASCII and ’‘“”–—; {len(instruction)} characters, outside the set: "
            f"{outside}): {instruction!r}"
        )
    return instruction


# --- chunkable rendering ----------------------------------------------------------------------------------
@runtime_checkable
class ChunkableRendering(Protocol):
    """What an unwrapped env implements so that ``ChunkedActions`` renders only the frames a policy reads.

    Rendering dominates a step in software GL; a chunk of actions runs with the cameras off and renders once,
    for the observation it returns.
    """

    def set_camera_rendering(self, enabled: bool) -> None:
        """Render cameras for returned observations (True) or repeat the last frames (False, physics only)."""

    def render_cameras(self) -> dict[str, np.ndarray]:
        """Render the current state's camera entries now, whatever the switch (``{key: uint8 frame}``)."""


CHUNKABLE_RENDERING_METHODS = ("set_camera_rendering", "render_cameras")


def missing_chunkable_methods(env: Any) -> list[str]:
    """The methods of :class:`ChunkableRendering` that ``env`` lacks (empty: it can run chunked)."""
    return [name for name in CHUNKABLE_RENDERING_METHODS if not callable(getattr(env, name, None))]
