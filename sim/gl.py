"""Choose MuJoCo's OpenGL backend before MuJoCo is imported.

MuJoCo reads ``MUJOCO_GL`` once, at import. Headless machines need ``egl`` (NVIDIA GPU) or ``osmesa``
(CPU; ``apt-get install libosmesa6``); the default ``glfw`` needs a display. ``import sim`` calls
:func:`default_gl_backend` so that every process that imports ``sim`` first (CLI, evaluation
workers) renders without set-up; an explicit ``MUJOCO_GL`` always wins.
"""

from __future__ import annotations

import glob
import os
import sys


def default_gl_backend() -> str:
    """Set ``MUJOCO_GL`` if unset: ``egl`` with an NVIDIA device, else ``osmesa``. Returns the value."""
    if "MUJOCO_GL" not in os.environ:
        gpu = bool(glob.glob("/dev/nvidia[0-9]*"))
        os.environ["MUJOCO_GL"] = "egl" if gpu and not os.environ.get("DISPLAY") else "osmesa"
    return os.environ["MUJOCO_GL"]


def render_error_hint(exc: BaseException) -> RuntimeError:
    """A RuntimeError that says how to fix a failed offscreen context."""
    backend = os.environ.get("MUJOCO_GL", "<unset>")
    late = "mujoco" in sys.modules and backend == "<unset>"
    msg = (
        f"MuJoCo could not create an offscreen OpenGL context (MUJOCO_GL={backend}): {exc}. "
        "On a CPU-only machine: `apt-get install -y libosmesa6` and MUJOCO_GL=osmesa; on an NVIDIA GPU: "
        "MUJOCO_GL=egl. MUJOCO_GL must be set before mujoco is first imported"
    )
    if late:
        msg += " (mujoco was imported before sim chose a backend: import sim first or export MUJOCO_GL)"
    return RuntimeError(msg + ".")
