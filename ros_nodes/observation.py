"""Build the policy's observation dict from the latest ROS message of each topic, as a robot profile says.

:class:`ObservationAssembler` does not subscribe to anything: a node creates one subscription per entry
of :attr:`ObservationAssembler.subscriptions` and forwards each message to ``update(topic, msg, now)``.
It keeps the newest message per topic (and the one before, for finite-difference sources) with its
receive time, so that any sampler, at any rate, can call ``assemble()``:

    assembler = ObservationAssembler(load_profile("sim_panda"), {"state": (23,)})
    for topic, msg_class, qos in assembler.subscriptions:
        node.create_subscription(msg_class, topic, lambda m, t=topic: assembler.update(t, m, now()), qos)
    ...
    if assembler.ready():
        obs, stamp = assembler.assemble()     # {"state": float32 (23,)}, oldest message stamp (s)

Keys follow the profile's :class:`hardware.profile.Source` lists: a low-dim key (``state``) concatenates
its sources in order, using the optional ones only as far as the checkpoint's size needs; an image,
depth or point-cloud key comes from its one topic and is fitted to the checkpoint's shape. The recorder
uses the same class with the profile's full key set (``obs_shapes=None``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from hardware.profile import UNMEASURED, CheckpointMismatchError, RobotProfile, Source, check_checkpoint
from ros_nodes import convert


class ObservationNotReady(RuntimeError):
    """``assemble()`` before every topic it needs has delivered a message."""


@dataclass
class _Latest:
    msg: Any
    received: float  # receive time (s, the node's clock)
    stamp: float  # the header stamp (s), or the receive time when the message has none
    previous: "_Latest | None" = None


NED_MESSAGES = {"px4_msgs/msg/VehicleOdometry"}  # PX4's axes; converted to ENU/FLU as they are read


def is_low_dim(key: str) -> bool:
    return not (key.startswith(("image_", "depth_")) or key == "points")


def match_observations(profile: RobotProfile, obs_shapes: Mapping[str, Sequence[int]] | None
                       ) -> dict[str, tuple[Source, ...]]:
    """The sources for each key of ``obs_shapes`` (all the profile's keys when None). Raises
    :class:`CheckpointMismatchError` naming the keys the profile cannot supply and the sizes it cannot build."""
    if obs_shapes is None:
        return {k: profile.sources_for(k) for k in profile.obs_keys}
    config = {"obs_keys": sorted(obs_shapes),
              "policy_config": {"obs_shapes": {k: list(v) for k, v in obs_shapes.items()},
                                "action_dim": profile.action_dim},
              "action_semantics": profile.action_semantics}
    return dict(check_checkpoint(profile, config).observations)


class ObservationAssembler:
    """Latest message per topic -> ``{key: array}`` following ``profile``'s observation map.

    Args:
        profile: the robot profile.
        obs_shapes: ``{key: shape}`` the policy needs (its checkpoint's ``obs_shapes``); None for every key
            the profile supplies, at its full size (the recorder).
        sources: already matched sources per key (``check_checkpoint(...).observations``); skips matching.
    """

    def __init__(self, profile: RobotProfile, obs_shapes: Mapping[str, Sequence[int]] | None = None,
                 sources: Mapping[str, tuple[Source, ...]] | None = None):
        self.profile = profile
        self.obs_shapes = None if obs_shapes is None else {k: tuple(v) for k, v in obs_shapes.items()}
        self.sources = dict(sources) if sources is not None else match_observations(profile, obs_shapes)
        for key, srcs in self.sources.items():
            for s in srcs:
                axes = "ned" if s.msg_type in NED_MESSAGES else "enu"
                if s.convention != axes:
                    raise ValueError(f"{key!r} reads {s.msg_type} on {s.topic!r} as {s.convention!r}; that "
                                     f"message is {axes!r} (NED: {sorted(NED_MESSAGES)})")
        feedback = [s for s in profile.feedback if s.field != UNMEASURED]
        topics: dict[str, Source] = {}
        for s in [*(s for srcs in self.sources.values() for s in srcs), *feedback]:
            if s.topic in topics and topics[s.topic].msg_type != s.msg_type:
                raise ValueError(f"profile {profile.name!r} reads topic {s.topic!r} as both "
                                 f"{topics[s.topic].msg_type} and {s.msg_type}")
            topics.setdefault(s.topic, s)
        self._topic_sources = topics
        # Observation topics gate readiness; feedback-only ones do not (the safety filter handles absence).
        self.required_topics = sorted({s.topic for srcs in self.sources.values() for s in srcs})
        self._latest: dict[str, _Latest] = {}
        self._lock = threading.Lock()

    @property
    def subscriptions(self) -> list[tuple[str, type, str]]:
        """``(topic, message class, qos name)`` for every topic to subscribe to."""
        return [(t, convert.message_class(s.msg_type), s.qos) for t, s in sorted(self._topic_sources.items())]

    # ---- input ------------------------------------------------------------------------------------

    def update(self, topic: str, msg: Any, now: float) -> None:
        """Record ``msg`` as the newest on ``topic``, received at ``now`` (s)."""
        if topic not in self._topic_sources:
            raise KeyError(f"topic {topic!r} feeds no observation of profile {self.profile.name!r}; "
                           f"it reads {sorted(self._topic_sources)}")
        stamp = now
        head = getattr(msg, "header", None)
        if head is not None and (head.stamp.sec or head.stamp.nanosec):
            stamp = convert.stamp_to_seconds(head.stamp)
        with self._lock:
            previous = self._latest.get(topic)
            if previous is not None:
                previous.previous = None  # keep two, not a chain
            self._latest[topic] = _Latest(msg, float(now), stamp, previous)

    def clear(self) -> None:
        with self._lock:
            self._latest.clear()

    # ---- state ------------------------------------------------------------------------------------

    def missing_topics(self) -> list[str]:
        with self._lock:
            return [t for t in self.required_topics if t not in self._latest]

    def ready(self) -> bool:
        return not self.missing_topics()

    def last_received(self) -> float | None:
        """The oldest receive time over the required topics (None until all have arrived)."""
        with self._lock:
            if any(t not in self._latest for t in self.required_topics):
                return None
            return min(self._latest[t].received for t in self.required_topics)

    # ---- output -----------------------------------------------------------------------------------

    def assemble(self) -> tuple[dict[str, np.ndarray], float]:
        """``({key: array}, oldest stamp)``: float32 low-dim vectors, uint8 ``(H, W, C)`` images, float32
        ``(N, 3|6)`` points; the stamp (s) of the oldest message used, for the staleness watchdog."""
        with self._lock:
            latest = dict(self._latest)
        missing = [t for t in self.required_topics if t not in latest]
        if missing:
            raise ObservationNotReady(f"no message yet on {missing} (profile {self.profile.name!r})")
        obs = {}
        for key, sources in self.sources.items():
            shape = None if self.obs_shapes is None else self.obs_shapes.get(key)
            if is_low_dim(key):
                value = np.concatenate([self._value(s, latest[s.topic]) for s in sources]).astype(np.float32)
                obs[key] = value if shape is None else value.reshape(shape)
            elif key == "points":
                obs[key] = _fit_points(convert.pointcloud2_to_array(latest[sources[0].topic].msg), shape)
            else:
                obs[key] = _fit_image(_image(latest[sources[0].topic].msg, key), shape, key)
        oldest = min(latest[t].stamp for t in self.required_topics)
        return obs, oldest

    def measured(self) -> np.ndarray:
        """The robot's measured value of each action dimension ``(A,)`` from the profile's feedback;
        NaN where it is unmeasured or its topic has not arrived (the safety filter's reference)."""
        with self._lock:
            latest = dict(self._latest)
        parts = []
        for s in self.profile.feedback:
            if s.field == UNMEASURED or s.topic not in latest:
                parts.append(np.full(s.size, np.nan))
            else:
                parts.append(self._value(s, latest[s.topic]))
        return np.concatenate(parts)

    def _value(self, s: Source, entry: _Latest) -> np.ndarray:
        if not s.derivative:
            return _field(s, entry.msg)
        prev = entry.previous
        if prev is None or entry.stamp <= prev.stamp:
            return np.zeros(s.size)  # one sample: no rate yet
        return (_field(s, entry.msg) - _field(s, prev.msg)) / (entry.stamp - prev.stamp)


def _field(s: Source, msg: Any) -> np.ndarray:
    """One source's values ``(s.size,)`` from one message."""
    if s.msg_type == "sensor_msgs/msg/JointState":
        return convert.jointstate_positions(msg, s.joints, s.field)
    if s.msg_type == "geometry_msgs/msg/PoseArray":
        poses = convert.posearray_to_array(msg)
        if len(poses) < s.first + s.count:
            raise ValueError(f"{s.topic!r} has {len(poses)} poses; the profile reads poses "
                             f"{s.first}..{s.first + s.count - 1}")
        return poses[s.first : s.first + s.count].reshape(-1)
    if s.msg_type == "geometry_msgs/msg/PoseStamped":
        return _pose_field(convert.pose_to_array(msg.pose), s.field)
    if s.msg_type in ("nav_msgs/msg/Odometry", "px4_msgs/msg/VehicleOdometry"):
        # ROS axes (ENU world, FLU body); linear velocity in the world frame, angular in the body frame
        state = (convert.odometry_to_state(msg) if s.msg_type == "nav_msgs/msg/Odometry"
                 else convert.vehicle_odometry_to_state(msg))
        if s.field.startswith("pose"):
            return _pose_field(state[:7], s.field)
        rotation = convert.quat_to_matrix(state[3:7])
        linear, angular = state[7:10], state[10:13]
        if s.frame == "body":
            linear = rotation.T @ linear
        if s.frame == "world":
            angular = rotation @ angular
        return {"twist.linear": linear, "twist.angular": angular, "twist.angular.z": angular[2:]}[s.field]
    raise ValueError(f"cannot read field {s.field!r} of {s.msg_type} (topic {s.topic!r})")


def _pose_field(pose: np.ndarray, field: str) -> np.ndarray:
    return {"pose": pose, "pose.position": pose[:3], "pose.orientation": pose[3:]}[field]


def _image(msg: Any, key: str) -> np.ndarray:
    if hasattr(msg, "format"):  # CompressedImage
        import imageio.v3 as iio

        image = np.asarray(iio.imread(bytes(msg.data)))
        return image[..., None] if image.ndim == 2 else image[..., :3]
    if key.startswith("depth_"):
        if msg.encoding not in ("32FC1", "16UC1"):
            raise ValueError(f"{key!r}: depth images must be 32FC1 (m) or 16UC1 (mm), got {msg.encoding!r}")
        dtype = np.float32 if msg.encoding == "32FC1" else np.uint16
        depth = np.frombuffer(bytes(msg.data), dtype=dtype).reshape(msg.height, -1)[:, : msg.width]
        return depth.astype(np.float32) * (1.0 if dtype is np.float32 else 1e-3)
    return convert.image_to_array(msg)


def _fit_image(image: np.ndarray, shape: tuple | None, key: str) -> np.ndarray:
    """Nearest-neighbour resize to the checkpoint's ``(H, W[, C])``: the camera may publish another size."""
    if shape is None or image.shape == tuple(shape):
        return image
    h, w = shape[0], shape[1]
    rows = (np.arange(h) * image.shape[0] / h).astype(int)
    cols = (np.arange(w) * image.shape[1] / w).astype(int)
    out = image[rows][:, cols]
    if out.shape != tuple(shape):
        raise ValueError(f"{key!r}: the camera gives {image.shape}, the policy expects {tuple(shape)}")
    return np.ascontiguousarray(out)


def _fit_points(points: np.ndarray, shape: tuple | None) -> np.ndarray:
    """Evenly subsample (or repeat) to the checkpoint's point count ``N``."""
    if shape is None or points.shape == tuple(shape):
        return points
    n, d = shape
    if points.shape[1] < d:
        raise ValueError(f"'points': the cloud has {points.shape[1]} values per point, the policy expects {d}")
    if len(points) == 0:
        raise ValueError("'points': the point cloud is empty")
    index = (np.arange(n) * len(points) / n).astype(int)
    return np.ascontiguousarray(points[index, :d])


__all__ = ["ObservationAssembler", "ObservationNotReady", "match_observations", "CheckpointMismatchError"]
