"""Cameras as 3-D sensors for any MuJoCo scene: depth, intrinsics/extrinsics, world-frame point clouds.

Conventions (DESIGN §3): depth is float32 ``(H, W)`` in metres along the optical axis (the camera-frame
z of the surface, not the length of the ray), oriented like the upright RGB frame of
:class:`sim.render.FrameRenderer`; pixels that see nothing read the far clipping distance.
:class:`CameraParams` uses the OpenCV pinhole model: pixel centres at integer ``(u, v)`` (``u`` the
column, ``v`` the row, from the top-left), camera frame x right, y down, z forward along the optical
axis. MuJoCo's own camera frame (x right, y up, looking along -z) is ``R_cv = R_mujoco @ diag(1, -1, -1)``.
Point clouds are float32 ``(N, 3)`` world-frame xyz in metres, or ``(N, 6)`` with rgb in ``[0, 1]``.

    cam = PointCloudCamera(model, data, ["front", "side"], size=84,
                           workspace=([-0.3, -0.3, 0.005], [0.3, 0.3, 0.4]), num_points=512)
    points = cam()                 # (512, 3) float32, world frame
    obs = cam.observe()            # {"image_<cam>", "depth_<cam>", "points"}
    attrs = cam.camera_attrs()     # intrinsics/extrinsics for the store's attributes
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sim.render import FrameRenderer

# MuJoCo's camera axes (x right, y up, z backward) -> OpenCV's (x right, y down, z forward).
_MUJOCO_TO_CV = np.diag([1.0, -1.0, -1.0])
# A frame rotated by 180 degrees in the image plane is seen by the camera turned 180 degrees about its
# optical axis; with the principal point at the image centre the intrinsics are unchanged.
_ROT180 = np.diag([-1.0, -1.0, 1.0])


# ------------------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class CameraParams:
    """A pinhole camera at one instant: intrinsics, pose in the world and clipping range.

    ``rotation`` is camera-to-world (its columns are the camera's x right, y down, z forward axes in
    the world frame) and ``position`` the optical centre in the world, so ``p_world = rotation @ p_cam
    + position``. ``znear``/``zfar`` are MuJoCo's clipping distances (metres); depth at ``zfar``
    means background.
    """

    name: str
    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float
    position: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3)
    znear: float
    zfar: float

    @property
    def intrinsic_matrix(self) -> np.ndarray:
        """K, (3, 3)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def pose(self) -> np.ndarray:
        """Camera-to-world homogeneous transform, (4, 4)."""
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = self.rotation, self.position
        return T

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> camera-frame points (N, 3)."""
        return (np.asarray(points, dtype=np.float64) - self.position) @ self.rotation

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixel coordinates ``uv`` (N, 2) (column, row) and depth z (N,)."""
        p = self.to_camera(points)
        z = p[:, 2]
        uv = np.stack([self.fx * p[:, 0] / z + self.cx, self.fy * p[:, 1] / z + self.cy], axis=1)
        return uv, z

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (for store attributes); :meth:`from_dict` restores it."""
        return {
            "name": self.name, "height": self.height, "width": self.width,
            "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy,
            "position": [float(x) for x in self.position],
            "rotation": [[float(x) for x in row] for row in self.rotation],
            "znear": self.znear, "zfar": self.zfar,
            "convention": "opencv",  # x right, y down, z forward; rotation is camera-to-world
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CameraParams":
        if d.get("convention", "opencv") != "opencv":
            raise ValueError(f"camera params in convention {d['convention']!r}; expected 'opencv'")
        return cls(
            name=str(d["name"]), height=int(d["height"]), width=int(d["width"]),
            fx=float(d["fx"]), fy=float(d["fy"]), cx=float(d["cx"]), cy=float(d["cy"]),
            position=np.asarray(d["position"], dtype=np.float64).reshape(3),
            rotation=np.asarray(d["rotation"], dtype=np.float64).reshape(3, 3),
            znear=float(d["znear"]), zfar=float(d["zfar"]),
        )


def camera_params(model: Any, data: Any, camera: str | int, height: int, width: int,
                  flip: bool = False) -> CameraParams:
    """Parameters of a MuJoCo camera rendered at ``height`` x ``width``, at the pose in ``data``.

    ``flip``: the frame is shown rotated by 180 degrees (as :class:`FrameRenderer` does for
    upside-down fixed cameras).
    """
    import mujoco

    cam_id = _camera_id(model, camera)
    if getattr(model, "cam_orthographic", np.zeros(model.ncam))[cam_id]:
        raise ValueError(f"camera {camera!r} is orthographic; only perspective cameras are supported")
    if np.any(getattr(model, "cam_sensorsize", np.zeros((model.ncam, 2)))[cam_id] > 0):
        raise ValueError(f"camera {camera!r} is defined by sensorsize/focal; only fovy cameras are supported")
    # MuJoCo fixes the vertical field of view and widens the horizontal one with the aspect ratio,
    # so pixels are square.
    f = 0.5 * height / np.tan(0.5 * np.deg2rad(model.cam_fovy[cam_id]))
    rotation = data.cam_xmat[cam_id].reshape(3, 3) @ _MUJOCO_TO_CV
    if flip:
        rotation = rotation @ _ROT180
    extent = float(model.stat.extent)
    return CameraParams(
        name=mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, cam_id) or str(cam_id),
        height=int(height), width=int(width),
        fx=float(f), fy=float(f), cx=(width - 1) / 2.0, cy=(height - 1) / 2.0,
        position=np.array(data.cam_xpos[cam_id], dtype=np.float64),
        rotation=np.array(rotation, dtype=np.float64),
        znear=float(model.vis.map.znear) * extent, zfar=float(model.vis.map.zfar) * extent,
    )


def _camera_id(model: Any, camera: str | int) -> int:
    import mujoco

    cam_id = camera if isinstance(camera, (int, np.integer)) else mujoco.mj_name2id(
        model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
    if not 0 <= cam_id < model.ncam:
        names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
        raise ValueError(f"unknown camera {camera!r}; this scene has {names}")
    return int(cam_id)


# ------------------------------------------------------------------------------------------ rendering
class RGBDRenderer(FrameRenderer):
    """A :class:`FrameRenderer` that also renders depth and knows its camera's parameters.

    ``renderer()`` / ``renderer.rgb()`` -> uint8 (H, W, 3); ``renderer.depth()`` -> float32 (H, W) metres;
    ``renderer.rgbd()`` -> both; ``renderer.params()`` -> :class:`CameraParams` at the current pose.
    RGB and depth are two render passes (depth's pass skips lighting and textures, so it is the cheaper).
    """

    def __init__(self, model: Any, data: Any, camera: str, height: int, width: int, fast: bool = True):
        super().__init__(model, data, camera, height, width, fast=fast)
        self.model = model
        self.height, self.width = int(height), int(width)
        self.cam_id = _camera_id(model, camera)
        camera_params(model, data, camera, height, width)  # reject unsupported camera kinds now

    def rgb(self) -> np.ndarray:
        return self()

    def depth(self) -> np.ndarray:
        self.renderer.enable_depth_rendering()
        try:
            self.renderer.update_scene(self.data, camera=self.camera)
            depth = self.renderer.render()
        finally:
            self.renderer.disable_depth_rendering()
        if self.flip:
            depth = depth[::-1, ::-1]
        return np.ascontiguousarray(depth, dtype=np.float32)

    def rgbd(self) -> tuple[np.ndarray, np.ndarray]:
        return self(), self.depth()

    def params(self) -> CameraParams:
        return camera_params(self.model, self.data, self.cam_id, self.height, self.width, flip=self.flip)


# ------------------------------------------------------------------------------------------ point clouds
def backproject(depth: np.ndarray, params: CameraParams, rgb: np.ndarray | None = None,
                max_depth: float | None = None) -> np.ndarray:
    """Lift a depth image to world points, dropping background (depth at the far plane) and ``max_depth``+.

    Args:
        depth: float32 (H, W) metres along the optical axis.
        params: the camera that rendered it.
        rgb: optional uint8 (H, W, 3); adds colour in [0, 1].
    Returns:
        float32 (M, 3) xyz, or (M, 6) xyz + rgb, world frame; M = the number of valid pixels.
    """
    depth = np.asarray(depth)
    if depth.shape != (params.height, params.width):
        raise ValueError(f"depth of shape {depth.shape} for camera {params.name!r} of size "
                         f"{(params.height, params.width)}")
    if rgb is not None and np.shape(rgb) != (params.height, params.width, 3):
        raise ValueError(f"rgb of shape {np.shape(rgb)}; expected {(params.height, params.width, 3)}")
    limit = params.zfar * (1.0 - 1e-4)  # background reads zfar up to float rounding
    if max_depth is not None:
        limit = min(limit, float(max_depth))
    v, u = np.nonzero((depth > 0) & (depth < limit))
    z = depth[v, u].astype(np.float64)
    p_cam = np.stack([(u - params.cx) * z / params.fx, (v - params.cy) * z / params.fy, z], axis=1)
    xyz = (p_cam @ params.rotation.T + params.position).astype(np.float32)
    if rgb is None:
        return xyz
    return np.concatenate([xyz, np.asarray(rgb)[v, u].astype(np.float32) / 255.0], axis=1)


def as_workspace(workspace: Any) -> np.ndarray:
    """``(low, high)`` -> float64 (2, 3), checked."""
    box = np.asarray(workspace, dtype=np.float64)
    if box.shape != (2, 3):
        raise ValueError(f"workspace must be (low xyz, high xyz), shape (2, 3); got shape {box.shape}")
    if not np.all(box[0] < box[1]):
        raise ValueError(f"workspace low {box[0].tolist()} must be below high {box[1].tolist()} on every axis")
    return box


def crop(points: np.ndarray, workspace: Any) -> np.ndarray:
    """The points (M, C) whose xyz lie inside the axis-aligned world box ``(low, high)``."""
    box = as_workspace(workspace)
    xyz = points[:, :3]
    return points[np.all((xyz >= box[0]) & (xyz <= box[1]), axis=1)]


def farthest_point_sample(points: np.ndarray, n: int, start: int | np.random.Generator = 0) -> np.ndarray:
    """Indices (n,) of ``n`` points chosen by farthest-point sampling on xyz (the first 3 columns).

    Each pick is the point farthest from those picked so far, which covers the cloud evenly (the
    largest gap is at most twice the best achievable). ``start`` is the first index, or a generator
    to draw it from. With fewer than ``n`` points, every point is picked and the order repeats.
    """
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    m = len(xyz)
    if m == 0:
        raise ValueError("farthest_point_sample on an empty cloud")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    first = int(start.integers(m)) if isinstance(start, np.random.Generator) else int(start)
    if not 0 <= first < m:
        raise ValueError(f"start index {first} out of range for {m} points")
    k = min(n, m)
    # One contiguous array per axis: summing an (M, 3) array along its rows is ~10x slower.
    x, y, z = (np.ascontiguousarray(c) for c in xyz.T)
    picked = np.empty(k, dtype=np.int64)
    picked[0] = first
    dist = (x - x[first]) ** 2 + (y - y[first]) ** 2 + (z - z[first]) ** 2  # squared, to the picked set
    for i in range(1, k):
        j = picked[i] = np.argmax(dist)
        np.minimum(dist, (x - x[j]) ** 2 + (y - y[j]) ** 2 + (z - z[j]) ** 2, out=dist)
    return np.resize(picked, n)


def fuse(depths: Sequence[np.ndarray], params: Sequence[CameraParams], rgbs: Sequence[np.ndarray] | None = None,
         workspace: Any = None, num_points: int | None = None, max_depth: float | None = None,
         start: int | np.random.Generator = 0) -> np.ndarray:
    """One world-frame cloud from several cameras: back-project, crop, then farthest-point sample.

    Returns float32 (num_points, 3|6) (all surviving points if ``num_points`` is None). An empty cloud
    (nothing in the workspace) comes back as zeros of the requested shape.
    """
    if len(depths) != len(params) or (rgbs is not None and len(rgbs) != len(params)):
        raise ValueError(f"{len(depths)} depth images, {len(params)} cameras"
                         + ("" if rgbs is None else f", {len(rgbs)} rgb images"))
    clouds = [backproject(d, p, None if rgbs is None else rgbs[i], max_depth)
              for i, (d, p) in enumerate(zip(depths, params))]
    cloud = np.concatenate(clouds, axis=0)
    if workspace is not None:
        cloud = crop(cloud, workspace)
    if num_points is None:
        return cloud
    if len(cloud) == 0:
        return np.zeros((num_points, cloud.shape[1]), dtype=np.float32)
    return cloud[farthest_point_sample(cloud, num_points, start)]


class PointCloudCamera:
    """A fixed-size world-frame point cloud from one or more cameras of a MuJoCo scene.

    Args:
        model, data: the scene; clouds reflect ``data`` at call time.
        cameras: camera names.
        size: image side, or (height, width).
        workspace: ``(low xyz, high xyz)`` world box to keep, or None for everything but background.
        num_points: N, the cloud's fixed size (None: every surviving point, variable size).
        colour: (N, 6) with rgb in [0, 1] instead of (N, 3); renders RGB too.
        max_depth: drop points farther than this from their camera (metres).
        seed: None starts sampling at the first point (fully deterministic); an int draws each call's
            start from a generator seeded with it (deterministic sequence).
    """

    def __init__(self, model: Any, data: Any, cameras: str | Sequence[str], size: int | tuple[int, int] = 84,
                 workspace: Any = None, num_points: int | None = 512, colour: bool = False,
                 max_depth: float | None = None, seed: int | None = None):
        self.cameras = [cameras] if isinstance(cameras, str) else list(cameras)
        if not self.cameras:
            raise ValueError("PointCloudCamera needs at least one camera")
        self.height, self.width = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
        self.workspace = None if workspace is None else as_workspace(workspace)
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be positive or None, got {num_points}")
        self.num_points, self.colour, self.max_depth = num_points, bool(colour), max_depth
        self._rng = None if seed is None else np.random.default_rng(seed)
        self.renderers = [RGBDRenderer(model, data, c, self.height, self.width) for c in self.cameras]

    def __call__(self) -> np.ndarray:
        """Points, float32 (N, 3) or (N, 6)."""
        return self.observe(images=False)["points"]

    def observe(self, images: bool = True) -> dict[str, np.ndarray]:
        """``points`` and, with ``images``, ``image_<cam>`` (uint8 HWC) and ``depth_<cam>`` (float32 HW)."""
        rgbs = [r() for r in self.renderers] if (images or self.colour) else None
        depths = [r.depth() for r in self.renderers]
        points = fuse(depths, self.params(), rgbs if self.colour else None, self.workspace, self.num_points,
                      self.max_depth, 0 if self._rng is None else self._rng)
        obs = {"points": points}
        if images:
            for cam, rgb, depth in zip(self.cameras, rgbs, depths):
                obs[f"image_{cam}"], obs[f"depth_{cam}"] = rgb, depth
        return obs

    def params(self) -> list[CameraParams]:
        return [r.params() for r in self.renderers]

    def camera_attrs(self) -> dict[str, dict[str, Any]]:
        """``{camera: CameraParams.to_dict()}`` at the current poses, for the store's attributes."""
        return {p.name: p.to_dict() for p in self.params()}

    def close(self) -> None:
        for r in self.renderers:
            r.close()
        self.renderers = []
