"""Meta-World v3 tasks behind the robopolicy env interface, and their shipped scripted experts.

Observation: ``{"state": float32 (39,)}`` plus, on request (:mod:`sim.camera_obs`), ``image_<camera>``
(uint8 HWC), ``depth_<camera>`` (float32 HW, metres) and ``points`` (float32 N x 3|6, world frame,
cropped to the space above the table).
``reset(seed=s)`` gives a deterministic, seed-dependent random initial configuration (object and goal
positions). ``info["success"]`` is a bool; the episode terminates at success and is truncated at the
task's step cap (DESIGN §8).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Sequence

import gymnasium
import numpy as np
from gymnasium import spaces

from sim.camera_obs import DEFAULT_NUM_POINTS, CameraObserver, camera_obs_config
from sim.registry import METAWORLD_CAMERA_DEFAULTS, METAWORLD_CONTROL_RATE_HZ, task_spec
from sim.render import FrameRenderer

STATE_DIM = 39
ACTION_DIM = 4


def _short_task(task_name: str) -> str:
    """'robopolicy/metaworld-push-v3' | 'metaworld-push-v3' | 'push-v3' -> 'push-v3'."""
    name = task_name.removeprefix("robopolicy/").removeprefix("metaworld-")
    return name.removesuffix("-goal-observable")


def expert_class_name(task: str) -> str:
    """'button-press-topdown-v3' -> 'SawyerButtonPressTopdownV3Policy'."""
    parts = _short_task(task).split("-")
    return "Sawyer" + "".join(p[:1].upper() + p[1:] for p in parts) + "Policy"


def expert_class(task: str) -> type:
    """Meta-World's shipped scripted policy class for a task."""
    import metaworld.policies as mwp

    task = _short_task(task)
    cls = getattr(mwp, expert_class_name(task), None)
    if cls is None:  # names that do not follow the pattern, e.g. peg-insert-side -> PegInsertionSide
        cls = getattr(mwp, "ENV_POLICY_MAP", {}).get(task)
    if cls is None:
        raise ValueError(f"no Meta-World expert for task {task!r} (looked for {expert_class_name(task)})")
    return cls


class MetaWorldTask(gymnasium.Env):
    """One Meta-World v3 task (goal observable) with a dict observation.

    Args:
        task_name: ``push-v3``, ``metaworld-push-v3`` or ``robopolicy/metaworld-push-v3``.
        render: add ``image_<camera>`` (uint8, ``image_size``x``image_size``x3) to the observation.
        camera / cameras: camera name, or a sequence of names, for the observations and for ``render()``
            (the first one). Meta-World cameras: corner, corner2, corner3, corner4, topview,
            behindGripper, gripperPOV.
        depth, points, num_points, point_colour, workspace: depth maps and a world-frame point cloud
            (:mod:`sim.camera_obs`); the workspace defaults to the space above the table.
        image_size: side of the image and depth observations in pixels.
        render_size: side of the ``render()`` frame (videos).
        max_steps: step cap; defaults to the task's registered cap.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": METAWORLD_CONTROL_RATE_HZ}

    def __init__(
        self,
        task_name: str,
        render: bool | None = None,
        camera: str | Sequence[str] | None = None,
        image_size: int | None = None,
        render_size: int = 128,
        max_steps: int | None = None,
        render_mode: str | None = "rgb_array",
        cameras: str | Sequence[str] | None = None,
        depth: bool = False,
        points: bool = False,
        num_points: int = DEFAULT_NUM_POINTS,
        point_colour: bool = False,
        workspace: Any = None,
    ):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        self.task = _short_task(task_name)
        key = f"{self.task}-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE:
            task_spec(task_name)  # raises UnknownTaskError with the list of names
            raise ValueError(f"Meta-World has no task {self.task!r}")
        self.spec_ = task_spec(f"metaworld-{self.task}")
        self.max_steps = int(max_steps if max_steps is not None else self.spec_.max_steps)
        self.camera_config = camera_obs_config(render, camera, cameras, depth, points, image_size, num_points,
                                               point_colour, workspace, defaults=METAWORLD_CAMERA_DEFAULTS)
        self.spec_ = dataclasses.replace(
            self.spec_, obs_shapes={**self.spec_.obs_shapes, **self.camera_config.shapes()})
        self.cameras = list(self.camera_config.cameras)
        self.image_size = self.camera_config.image_size
        self.render_size = int(render_size)
        self.render_mode = render_mode

        env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=0)
        # Random initial configuration on every reset, drawn from env.np_random (seeded by env.seed),
        # not from numpy's global generator (which is what seeded_rand_vec=False would use).
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        # Our cap is the task's (truncated=True there). Meta-World's own horizon raises an error on the
        # step after it; lift it so that stepping on after truncation (gymnasium leaves that to the
        # caller) never crashes and never reports a second truncation.
        env.max_path_length = 2**62
        self._env = env

        rate = 1.0 / float(env.dt)
        if abs(rate - self.spec_.control_rate_hz) > 1e-6:
            raise RuntimeError(f"{self.task}: env runs at {rate} Hz but the spec says {self.spec_.control_rate_hz}")
        self.control_rate_hz = rate

        self._camera_obs = CameraObserver(env.model, env.data, self.camera_config)
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, shape=(STATE_DIM,), dtype=np.float32),
            **self.camera_config.spaces(),
        })
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)

        self._video_renderer: FrameRenderer | None = None
        self._steps = 0
        self._done = False
        self.last_seed: int | None = None

    # ---------------------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        # seed=s gives Meta-World seed s; seed=None continues the stream of the last seeded reset.
        mw_seed = int(seed) if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        self._env.seed(mw_seed)
        state, _ = self._env.reset()
        self.last_seed = mw_seed
        self._steps = 0
        self._done = False
        return self._obs(state), {"seed": mw_seed, "success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"{self.task}: action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{self.task}: non-finite action {action}")
        state, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self._steps += 1
        info = dict(info)
        success = bool(info.get("success", 0.0) > 0.5)
        info["success"] = success
        info["steps"] = self._steps
        terminated = success
        truncated = (not terminated) and self._steps >= self.max_steps
        self._done = terminated or truncated
        return self._obs(state), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray:
        """RGB frame (uint8, render_size x render_size x 3) from the first camera, upright."""
        if self._video_renderer is None:
            self._video_renderer = FrameRenderer(
                self._env.model, self._env.data, self.cameras[0], self.render_size, self.render_size
            )
        return self._video_renderer()

    def close(self) -> None:
        self._camera_obs.close()
        if self._video_renderer is not None:
            self._video_renderer.close()
            self._video_renderer = None
        self._env.close()  # its own (gymnasium) renderer was never opened; this is a no-op then

    # ---------------------------------------------------------------------------- helpers
    @property
    def task_spec(self):
        return self.spec_

    @property
    def unwrapped_metaworld(self):
        return self._env

    def camera_attrs(self) -> dict[str, dict[str, Any]]:
        """Intrinsics and extrinsics of the observation cameras (the store's ``cameras`` attribute)."""
        return self._camera_obs.camera_attrs()

    def _obs(self, state: np.ndarray) -> dict[str, np.ndarray]:
        return {"state": np.asarray(state, dtype=np.float32).copy(), **self._camera_obs.observe()}


class MetaWorldExpert:
    """Meta-World's shipped scripted policy behind the robopolicy policy interface.

    ``reset()``; ``expert(obs)`` / ``expert.act(obs)`` -> float32 (4,) in [-1, 1] from ``obs["state"]``.
    Picklable (workers of :func:`sim.evaluate` build it through ``functools.partial(make_expert, name)``).
    """

    action_semantics = "metaworld"
    action_dim = ACTION_DIM
    sampler = "scripted"
    nfe = 0

    def __init__(self, task_name: str):
        self.task = _short_task(task_name)
        cls = expert_class(self.task)
        self.name = cls.__name__
        self._policy = cls()

    def reset(self) -> None:  # Meta-World's experts are stateless
        pass

    def __call__(self, obs: dict[str, np.ndarray] | np.ndarray) -> np.ndarray:
        state = obs["state"] if isinstance(obs, dict) else obs
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (STATE_DIM,):
            raise ValueError(f"expert expects a ({STATE_DIM},) state, got {state.shape}")
        with warnings.catch_warnings():  # "Constant(s) may be too high": the gains saturate the clip, by design
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(state)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    act = __call__

    def __repr__(self) -> str:
        return f"MetaWorldExpert({self.task!r}, {self.name})"

