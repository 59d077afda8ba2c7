"""Simulated tasks behind one env interface, scripted experts, collection and evaluation.

``import sim`` is cheap: it registers the task names (with gymnasium too) and imports MuJoCo,
Meta-World, torch and the demonstration store only when an env, an expert, a collection or an
evaluation is actually made.
"""

from __future__ import annotations

from sim.gl import default_gl_backend

default_gl_backend()  # before anything imports mujoco: osmesa on CPU, egl on an NVIDIA GPU

from sim.registry import (  # noqa: E402
    TaskSpec,
    UnknownTaskError,
    canonical_name,
    list_tasks,
    make,
    make_expert,
    register_task,
    task_spec,
)

# Imported eagerly on purpose: the modules are named like the functions they hold, and binding the
# functions here (after the submodule import) keeps ``sim.collect`` / ``sim.evaluate`` the functions.
from sim.collect import collect  # noqa: E402
from sim.evaluate import EpisodeResult, EvalResult, evaluate, wilson_ci  # noqa: E402

__all__ = [
    "make",
    "list_tasks",
    "task_spec",
    "make_expert",
    "canonical_name",
    "register_task",
    "TaskSpec",
    "UnknownTaskError",
    "collect",
    "evaluate",
    "EvalResult",
    "EpisodeResult",
    "wilson_ci",
]
