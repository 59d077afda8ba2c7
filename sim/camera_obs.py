"""Camera observations for the arm tasks: which of ``image_<cam>``, ``depth_<cam>`` and ``points`` an env
returns, their shapes, and the renderers that produce them (DESIGN §3, §8).

Every arm env (Meta-World, robosuite) takes the same options and hands them to :func:`camera_obs_config`:

    render        image_<cam> for every camera, uint8 (S, S, 3) (default: on when ``cameras`` is given)
    cameras       camera names (``camera`` is the older spelling of the same option)
    depth         depth_<cam> for every camera, float32 (S, S), metres along the optical axis
    points        points, float32 (N, 3) world-frame xyz, or (N, 6) with rgb in [0, 1]: every camera's
                  depth lifted to the world, cropped to ``workspace`` and farthest-point sampled to N
    image_size    S, the side of images and depth maps
    num_points    N
    point_colour  (N, 6) instead of (N, 3)
    workspace     ((x, y, z) low, (x, y, z) high) world box; default: the task's (above its table)

The task's defaults (camera, image size, workspace) are registered with the task
(``register_task(..., camera_defaults=...)``), so ``sim.task_spec(name, **options)`` can give the
observation shapes without building the env. Cheap to import: no MuJoCo until a renderer is made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

DEFAULT_NUM_POINTS = 512


@dataclass(frozen=True)
class CameraObsConfig:
    """What an env renders into its observation. ``cameras`` is empty when it renders nothing."""

    cameras: tuple[str, ...] = ()
    images: bool = False
    depth: bool = False
    points: bool = False
    image_size: int = 84
    num_points: int = DEFAULT_NUM_POINTS
    point_colour: bool = False
    workspace: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    @property
    def renders(self) -> bool:
        return self.images or self.depth or self.points

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Observation key -> per-step shape of the rendered keys."""
        s = self.image_size
        out: dict[str, tuple[int, ...]] = {}
        for cam in self.cameras:
            if self.images:
                out[f"image_{cam}"] = (s, s, 3)
            if self.depth:
                out[f"depth_{cam}"] = (s, s)
        if self.points:
            out["points"] = (self.num_points, 6 if self.point_colour else 3)
        return out

    def spaces(self, zfar: float = np.inf) -> dict[str, Any]:
        """Gymnasium spaces of the rendered keys (depth up to ``zfar``, the far clipping distance)."""
        from gymnasium import spaces

        out = {}
        for key, shape in self.shapes().items():
            if key.startswith("image_"):
                out[key] = spaces.Box(0, 255, shape=shape, dtype=np.uint8)
            elif key.startswith("depth_"):
                out[key] = spaces.Box(0.0, zfar, shape=shape, dtype=np.float32)
            else:
                out[key] = spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        return out


def camera_obs_config(
    render: bool | None = None,
    camera: str | Sequence[str] | None = None,
    cameras: str | Sequence[str] | None = None,
    depth: bool = False,
    points: bool = False,
    image_size: int | None = None,
    num_points: int = DEFAULT_NUM_POINTS,
    point_colour: bool = False,
    workspace: Any = None,
    *,
    defaults: dict[str, Any],
) -> CameraObsConfig:
    """The env options above -> a checked :class:`CameraObsConfig`; ``defaults`` are the task's
    ``camera``, ``image_size`` and ``workspace``."""
    from sim.cameras import as_workspace

    if camera is not None and cameras is not None and _names(camera) != _names(cameras):
        raise ValueError(f"camera={camera!r} and cameras={cameras!r} disagree; give one of them")
    names = _names(cameras if cameras is not None else camera if camera is not None else defaults["camera"])
    if not names:
        raise ValueError("cameras is empty; name at least one camera")
    images = bool(render) if render is not None else cameras is not None
    size = int(image_size if image_size is not None else defaults["image_size"])
    if size < 1:
        raise ValueError(f"image_size must be positive, got {size}")
    if points and int(num_points) < 1:
        raise ValueError(f"num_points must be positive, got {num_points}")
    box = workspace if workspace is not None else defaults.get("workspace")
    if points and box is None:
        raise ValueError("points=True needs a workspace (the task registers none): pass workspace=(low, high)")
    box = None if box is None else tuple(tuple(float(x) for x in row) for row in as_workspace(box))
    return CameraObsConfig(cameras=names, images=images, depth=bool(depth), points=bool(points), image_size=size,
                           num_points=int(num_points), point_colour=bool(point_colour), workspace=box)


def _names(camera: str | Sequence[str]) -> tuple[str, ...]:
    return (camera,) if isinstance(camera, str) else tuple(camera)


def camera_options_for(obs_shapes: dict[str, Sequence[int]]) -> dict[str, Any]:
    """Env options that produce a policy's camera observation keys (e.g. from a checkpoint's obs_shapes).

    ``{"image_front": (84, 84, 3), "points": (512, 3)}`` -> ``{"render": True, "cameras": ["front"],
    "image_size": 84, "points": True, "num_points": 512}``; ``{}`` when the policy needs no camera.
    """
    images = [k[len("image_"):] for k in obs_shapes if k.startswith("image_")]
    depths = [k[len("depth_"):] for k in obs_shapes if k.startswith("depth_")]
    if images and depths and sorted(images) != sorted(depths):
        raise ValueError(f"images from {images} but depth from {depths}: an env renders both for the same cameras")
    opts: dict[str, Any] = {}
    cams = images or depths
    if cams:
        opts.update(render=bool(images), cameras=cams, depth=bool(depths),
                    image_size=int(obs_shapes[f"image_{cams[0]}" if images else f"depth_{cams[0]}"][0]))
    if "points" in obs_shapes:
        n, c = obs_shapes["points"]
        opts.update(points=True, num_points=int(n), point_colour=int(c) == 6)
    return opts


class CameraObserver:
    """Renders a :class:`CameraObsConfig`'s keys from a MuJoCo ``model``/``data`` (the state at call time).

    Renderers are made on first use, so an env that never observes through a camera opens no GL context.
    Points come from every configured camera (one world-frame cloud; farthest-point sampling starts at
    the first point, so a state gives one cloud).
    """

    def __init__(self, model: Any, data: Any, config: CameraObsConfig):
        self.model, self.data, self.config = model, data, config
        self._renderers: list[Any] | None = None

    @property
    def renderers(self) -> list[Any]:
        if self._renderers is None:
            from sim.cameras import RGBDRenderer

            s = self.config.image_size
            self._renderers = [RGBDRenderer(self.model, self.data, cam, s, s) for cam in self.config.cameras]
        return self._renderers

    def observe(self) -> dict[str, np.ndarray]:
        """The rendered keys of the current state (see :meth:`CameraObsConfig.shapes`)."""
        from sim.cameras import fuse

        c = self.config
        if not c.renders:
            return {}
        obs: dict[str, np.ndarray] = {}
        rgbs = [r() for r in self.renderers] if (c.images or (c.points and c.point_colour)) else None
        depths = [r.depth() for r in self.renderers] if (c.depth or c.points) else None
        for i, cam in enumerate(c.cameras):
            if c.images:
                obs[f"image_{cam}"] = rgbs[i]
            if c.depth:
                obs[f"depth_{cam}"] = depths[i]
        if c.points:
            params = [r.params() for r in self.renderers]
            obs["points"] = fuse(depths, params, rgbs if c.point_colour else None, c.workspace, c.num_points)
        return obs

    def camera_attrs(self) -> dict[str, dict[str, Any]]:
        """``{camera: CameraParams.to_dict()}`` at the current poses (the store's ``cameras`` attribute),
        each with ``moving``: true for a camera mounted on a moving body (its extrinsics hold for this
        instant only)."""
        import mujoco

        out = {}
        for r in self.renderers:
            p = r.params().to_dict()
            p["moving"] = bool(self.model.cam_bodyid[r.cam_id] != 0
                               or self.model.cam_mode[r.cam_id] != mujoco.mjtCamLight.mjCAMLIGHT_FIXED)
            out[p["name"]] = p
        return out

    def close(self) -> None:
        for r in self._renderers or []:
            r.close()
        self._renderers = None
