"""Headless rendering set-up shared by the MuJoCo-based env families.

MuJoCo reads ``MUJOCO_GL`` once, when ``mujoco`` is first imported, and PyOpenGL reads
``PYOPENGL_PLATFORM`` at its first import; both must therefore be chosen before anything imports them
(``vlamergebench.envs`` does it at import). On this kind of machine (no GPU, Mesa llvmpipe) EGL works out
of the box; OSMesa needs ``apt-get install libosmesa6``. When the chosen backend cannot create a context,
MuJoCo fails deep inside PyOpenGL (``'NoneType' object has no attribute 'glGetError'``);
:func:`require_gl_backend` turns that into an error saying what to install.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

# What each backend needs on a Debian/Ubuntu machine (docs/libero.md, headless rendering).
_INSTALL_HINTS = {
    "egl": "apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri  (headless EGL, Mesa)",
    "osmesa": "apt-get install -y libosmesa6 libosmesa6-dev  (software OSMesa)",
    "glfw": "a display (X11/Wayland) and the glfw library; for headless use MUJOCO_GL=egl instead",
}


class GLBackendError(RuntimeError):
    """No OpenGL backend could create a rendering context."""


def configure_gl_backend() -> str:
    """Pick MuJoCo's GL backend before mujoco is imported; returns the backend in effect.

    Headless EGL (Mesa) is the default; a user's ``MUJOCO_GL`` is respected. PyOpenGL must agree with MuJoCo,
    so ``PYOPENGL_PLATFORM`` follows unless the user set it.
    """
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    if "mujoco" in sys.modules and os.environ.get("MUJOCO_GL") != backend:  # pragma: no cover - defensive
        raise RuntimeError(
            "mujoco was imported before the GL backend was chosen; import vlamergebench.envs first"
        )
    return backend


@functools.cache
def require_gl_backend() -> str:
    """Import mujoco and create a 1x1 offscreen context; raise :class:`GLBackendError` if that fails.

    Cached: the check runs once per process. Returns the backend name.

    Raises:
        GLBackendError: naming the backend that was tried and the packages to install.
    """
    backend = configure_gl_backend()
    try:
        import mujoco

        context = mujoco.GLContext(1, 1)
        context.make_current()
        context.free()
    except Exception as error:  # any failure here means "no working GL"; the cause is chained below
        hints = "\n".join(f"  MUJOCO_GL={name}: {hint}" for name, hint in _INSTALL_HINTS.items())
        raise GLBackendError(
            f"MuJoCo cannot render headless with MUJOCO_GL={backend!r} "
            f"(PYOPENGL_PLATFORM={os.environ.get('PYOPENGL_PLATFORM')!r}): {type(error).__name__}: {error}.\n"
            f"Install a backend and select it with MUJOCO_GL before starting Python:\n{hints}"
        ) from error
    return backend


# robosuite's import-time advice about a private macro file (robosuite/__init__.py), and nothing else it logs.
_MACRO_ADVICE = (
    "No private macro file found",
    "It is recommended to use a private macro file",
    "To setup, run:",
)


def _not_macro_advice(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_MACRO_ADVICE)


def quiet_robosuite_macro_warning() -> None:
    """Drop robosuite's "No private macro file" warnings (a filter on its logger; other warnings pass)."""
    logger = logging.getLogger("robosuite_logs")
    if _not_macro_advice not in logger.filters:
        logger.addFilter(_not_macro_advice)
