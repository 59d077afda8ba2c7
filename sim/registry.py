"""Task registry: one name per simulated task, its spec, its env builder and its scripted expert.

Names are canonical ``robopolicy/<family>-<task>-<version>``; users may leave the ``robopolicy/``
prefix out. Every task is also registered with gymnasium so ``gymnasium.make(name)`` works.

Families (Meta-World now; robosuite and the quadrotor later) add themselves with
:func:`register_task`. Registration is cheap: builders are ``"module:attr"`` strings that are
imported only when an env or an expert is actually made, so ``import sim`` never pulls MuJoCo.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

PREFIX = "robopolicy/"


@dataclass(frozen=True)
class TaskSpec:
    """What a task promises: the contract a policy and a demonstration store are checked against."""

    name: str  # canonical, with the robopolicy/ prefix
    action_semantics: str  # one of DESIGN §3's words (metaworld, ee_delta, joint_pos, ...)
    action_dim: int
    obs_shapes: dict[str, tuple[int, ...]]  # key -> per-step shape (camera keys: task_spec(name, **options))
    control_rate_hz: float
    max_steps: int  # step cap; an episode also ends at success (DESIGN §8)
    description: str = ""

    def __hash__(self) -> int:  # obs_shapes is a dict; hash by the identity-defining fields
        return hash((self.name, self.action_semantics, self.action_dim, self.control_rate_hz, self.max_steps))

    @property
    def short_name(self) -> str:
        return self.name[len(PREFIX):] if self.name.startswith(PREFIX) else self.name


class UnknownTaskError(ValueError):
    """Raised for a task name that is not registered; the message lists the known names."""


@dataclass(frozen=True)
class _Entry:
    spec: TaskSpec
    env_entry: str  # "module:callable", called with **env_kwargs plus the user's kwargs
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    expert_entry: str | None = None  # "module:callable", called with **expert_kwargs
    expert_kwargs: dict[str, Any] = field(default_factory=dict)
    camera_defaults: dict[str, Any] | None = None  # camera, image_size, workspace (sim.camera_obs)


_REGISTRY: dict[str, _Entry] = {}


def _load(entry: str) -> Callable[..., Any]:
    module, _, attr = entry.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def register_task(
    spec: TaskSpec,
    env_entry: str,
    env_kwargs: dict[str, Any] | None = None,
    expert_entry: str | None = None,
    expert_kwargs: dict[str, Any] | None = None,
    gym: bool = True,
    camera_defaults: dict[str, Any] | None = None,
) -> None:
    """Add a task. ``spec.name`` must carry the ``robopolicy/`` prefix.

    ``camera_defaults`` (``camera``, ``image_size``, ``workspace``): the task's env takes the camera
    options of :mod:`sim.camera_obs` (images, depth, points), and :func:`task_spec` accepts them too.
    """
    if not spec.name.startswith(PREFIX):
        raise ValueError(f"task names are registered with the {PREFIX!r} prefix, got {spec.name!r}")
    if spec.name in _REGISTRY:
        raise ValueError(f"task {spec.name!r} is already registered")
    _REGISTRY[spec.name] = _Entry(spec, env_entry, dict(env_kwargs or {}), expert_entry, dict(expert_kwargs or {}),
                                  dict(camera_defaults) if camera_defaults is not None else None)
    if gym:
        import gymnasium

        if spec.name not in gymnasium.registry:
            gymnasium.register(id=spec.name, entry_point=env_entry, kwargs=dict(env_kwargs or {}))


def list_tasks(family: str | None = None) -> list[str]:
    """Canonical names of every registered task (optionally only one family, e.g. ``"metaworld"``)."""
    names = sorted(_REGISTRY)
    if family is not None:
        names = [n for n in names if n[len(PREFIX):].startswith(family + "-")]
    return names


def canonical_name(name: str) -> str:
    """Normalise a user-given task name to its canonical form, or raise :class:`UnknownTaskError`."""
    if not isinstance(name, str):
        raise TypeError(f"task name must be a string, got {type(name).__name__}")
    stripped = name.strip()
    full = stripped if stripped.startswith(PREFIX) else PREFIX + stripped
    if full in _REGISTRY:
        return full
    raise UnknownTaskError(_unknown_message(name))


def _unknown_message(name: str) -> str:
    short = name.strip()
    if short.startswith(PREFIX):
        short = short[len(PREFIX):]
    shorts = [n[len(PREFIX):] for n in sorted(_REGISTRY)]
    # Also compare against the name without its family (so "push-v3" finds "metaworld-push-v3").
    candidates: dict[str, str] = {}
    for s in shorts:
        candidates[s] = s
        fam, _, rest = s.partition("-")
        candidates.setdefault(rest, s)
    close = difflib.get_close_matches(short, list(candidates), n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(PREFIX + candidates[c] for c in close))
    msg = f"unknown task {name!r}."
    if suggestions:
        msg += f" Did you mean {suggestions[0]!r}?"
        if len(suggestions) > 1:
            msg += " (or " + ", ".join(repr(s) for s in suggestions[1:]) + ")"
    msg += f" Known tasks ({len(shorts)}, the {PREFIX!r} prefix is optional): " + ", ".join(
        PREFIX + s for s in shorts
    )
    return msg


def task_spec(name: str, **camera_options: Any) -> TaskSpec:
    """The task's spec; with camera options (``cameras=("agentview",), depth=True, points=True``, ...; the
    env's own, see :mod:`sim.camera_obs`) its ``obs_shapes`` also hold the rendered keys."""
    entry = _REGISTRY[canonical_name(name)]
    if not camera_options:
        return entry.spec
    config = camera_config(name, **camera_options)
    return dataclasses.replace(entry.spec, obs_shapes={**entry.spec.obs_shapes, **config.shapes()})


def camera_config(name: str, **camera_options: Any) -> Any:
    """The task's :class:`sim.camera_obs.CameraObsConfig` for these env options (its defaults filled in)."""
    from sim.camera_obs import camera_obs_config

    entry = _REGISTRY[canonical_name(name)]
    if entry.camera_defaults is None:
        raise ValueError(f"task {entry.spec.name!r} takes no camera options (images, depth, points); "
                         f"the arm tasks (metaworld-*, robosuite-*) do")
    return camera_obs_config(**camera_options, defaults=entry.camera_defaults)


def make(name: str, **kwargs: Any) -> Any:
    """Build the task's env (a ``gymnasium.Env`` with a dict observation and ``info["success"]``)."""
    entry = _REGISTRY[canonical_name(name)]
    return _load(entry.env_entry)(**{**entry.env_kwargs, **kwargs})


def make_expert(name: str, **kwargs: Any) -> Any:
    """The task's scripted expert: ``reset()`` and ``__call__(obs) -> (A,) float32`` (also ``act``)."""
    entry = _REGISTRY[canonical_name(name)]
    if entry.expert_entry is None:
        raise ValueError(f"task {entry.spec.name!r} has no scripted expert")
    return _load(entry.expert_entry)(**{**entry.expert_kwargs, **kwargs})


# --------------------------------------------------------------------------------------------
# Meta-World v3. The names are listed here (not read from metaworld) so that registering them
# costs nothing; tests/sim checks that this list equals metaworld's own.

METAWORLD_V3_TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3",
    "coffee-pull-v3", "coffee-push-v3", "dial-turn-v3", "disassemble-v3", "door-close-v3",
    "door-lock-v3", "door-open-v3", "door-unlock-v3", "hand-insert-v3", "drawer-close-v3",
    "drawer-open-v3", "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3",
    "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3", "pick-place-wall-v3",
    "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3", "plate-slide-side-v3",
    "plate-slide-back-v3", "plate-slide-back-side-v3", "peg-insert-side-v3", "peg-unplug-side-v3",
    "soccer-v3", "stick-push-v3", "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3",
    "reach-v3", "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3",
    "window-close-v3",
)

# Meta-World steps the physics 5 frames of 0.0025 s per action: 80 Hz. MetaWorldTask checks this
# against the live env (1 / env.dt) when it is built.
METAWORLD_CONTROL_RATE_HZ = 1.0 / (5 * 0.0025)
METAWORLD_DEFAULT_MAX_STEPS = 200
# Step caps per task, from the shipped experts' successful episode lengths over seeds 0..49
# (python -m sim.bench_experts): 1.5x the 95th percentile, rounded up to a multiple of 50, clamped
# to [150, 500] (Meta-World's own horizon is 500). push-v3: p95 71 steps -> 150.
METAWORLD_MAX_STEPS: dict[str, int] = {
    "assembly-v3": 150, "basketball-v3": 200, "bin-picking-v3": 250, "box-close-v3": 250,
    "button-press-topdown-v3": 150, "button-press-topdown-wall-v3": 150, "button-press-v3": 150,
    "button-press-wall-v3": 150, "coffee-button-v3": 150, "coffee-pull-v3": 150, "coffee-push-v3": 150,
    "dial-turn-v3": 150, "disassemble-v3": 350, "door-close-v3": 150, "door-lock-v3": 200,
    "door-open-v3": 200, "door-unlock-v3": 150, "drawer-close-v3": 150, "drawer-open-v3": 150,
    "faucet-close-v3": 150, "faucet-open-v3": 150, "hammer-v3": 150, "hand-insert-v3": 150,
    "handle-press-side-v3": 150, "handle-press-v3": 150, "handle-pull-side-v3": 200,
    "handle-pull-v3": 200, "lever-pull-v3": 150, "peg-insert-side-v3": 300, "peg-unplug-side-v3": 250,
    "pick-out-of-hole-v3": 200, "pick-place-v3": 150, "pick-place-wall-v3": 200,
    "plate-slide-back-side-v3": 150, "plate-slide-back-v3": 150, "plate-slide-side-v3": 150,
    "plate-slide-v3": 150, "push-back-v3": 500, "push-v3": 150, "push-wall-v3": 150, "reach-v3": 150,
    "reach-wall-v3": 150, "shelf-place-v3": 200, "soccer-v3": 200, "stick-pull-v3": 250,
    "stick-push-v3": 150, "sweep-into-v3": 150, "sweep-v3": 200, "window-close-v3": 150,
    "window-open-v3": 150,
}

# Camera options (sim.camera_obs): the corner camera sees the whole table; the workspace is the space
# above the table top (z = 0) that the arm reaches, so the table itself drops out of point clouds.
METAWORLD_CAMERA_DEFAULTS = {"camera": "corner", "image_size": 96,
                             "workspace": ((-0.6, 0.3, 0.005), (0.6, 1.0, 0.5))}


def _register_metaworld() -> None:
    for task in METAWORLD_V3_TASKS:
        spec = TaskSpec(
            name=f"{PREFIX}metaworld-{task}",
            action_semantics="metaworld",
            action_dim=4,
            obs_shapes={"state": (39,)},
            control_rate_hz=METAWORLD_CONTROL_RATE_HZ,
            max_steps=METAWORLD_MAX_STEPS.get(task, METAWORLD_DEFAULT_MAX_STEPS),
            description=f"Meta-World v3 {task} (Sawyer arm, goal observable, random initial configuration per seed)",
        )
        register_task(
            spec,
            env_entry="sim.metaworld_tasks:MetaWorldTask",
            env_kwargs={"task_name": task},
            expert_entry="sim.metaworld_tasks:MetaWorldExpert",
            expert_kwargs={"task_name": task},
            camera_defaults=METAWORLD_CAMERA_DEFAULTS,
        )


_register_metaworld()

# Other families register themselves through the same register_task(); their modules import no simulator.
from sim.quadrotor.tasks import register_quadrotor_tasks  # noqa: E402

register_quadrotor_tasks()
from sim.robosuite_tasks import register_robosuite_tasks  # noqa: E402

register_robosuite_tasks()
