"""ROS 2 messages <-> numpy, at the boundary of the stack. Pure functions; no node, no I/O.

Conventions (DESIGN §3): inside the stack quaternions are ``wxyz`` and times are float seconds; ROS
stores ``xyzw`` and ``builtin_interfaces/Time``. Every conversion happens here, once, so a node never
touches a quaternion's order or a stamp's nanoseconds itself.

Frames: ROS REP-103 (ENU world, FLU body). ``nav_msgs/Odometry`` gives the pose in ``header.frame_id``
(world) and the twist in ``child_frame_id`` (body); the stack's quadrotor ``state`` wants the linear
velocity in the world frame, so :func:`odometry_to_state` rotates it, and :func:`state_to_odometry`
(the sim bridge) rotates it back.
"""

from __future__ import annotations

import importlib
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from geometry_msgs.msg import Pose, PoseArray, PoseStamped, TwistStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import Image, JointState, PointCloud2, PointField
from std_msgs.msg import Float32MultiArray, Header
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint



# Message packages that come from the vehicle's own ROS 2 workspace, not from wheels.
NOT_ON_PYPI = {
    "px4_msgs": "; build PX4/px4_msgs, the branch matching your PX4 firmware, in your ROS 2 workspace",
    "crazyflie_interfaces": "; it comes with Crazyswarm2 (IMRCLab/crazyswarm2) in your ROS 2 workspace",
}


def message_class(msg_type: str) -> type:
    """``"sensor_msgs/msg/JointState"`` -> the rclpy message class, with a clear error if it is not installed."""
    parts = msg_type.split("/")
    if len(parts) != 3 or parts[1] != "msg":
        raise ValueError(f"message types are written 'package/msg/Name', got {msg_type!r}")
    try:
        return getattr(importlib.import_module(f"{parts[0]}.msg"), parts[2])
    except (ImportError, AttributeError) as e:
        hint = NOT_ON_PYPI.get(parts[0], "")
        raise ValueError(f"message type {msg_type!r} is not installed in this environment ({e}){hint}") from e


# ---------------------------------------------------------------------------------------------- time


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(t: float) -> Time:
    """A ``builtin_interfaces/Time`` for ``t`` seconds (>= 0), rounded to the nanosecond."""
    if not np.isfinite(t) or t < 0:
        raise ValueError(f"a ROS stamp needs finite, non-negative seconds, got {t}")
    ns = int(round(t * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def seconds_to_duration(t: float) -> Duration:
    ns = int(round(t * 1e9))
    return Duration(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def duration_to_seconds(d: Duration) -> float:
    return d.sec + d.nanosec * 1e-9


def header(stamp: float | Time, frame_id: str = "") -> Header:
    return Header(stamp=stamp if isinstance(stamp, Time) else seconds_to_stamp(stamp), frame_id=frame_id)


# ----------------------------------------------------------------------------------------- rotations


def xyzw_to_wxyz(q) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 3:], q[..., :3]], axis=-1)


def wxyz_to_xyzw(q) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def quat_to_matrix(q_wxyz) -> np.ndarray:
    """(3, 3) rotation matrix of a unit quaternion ``wxyz`` (normalised here): body -> world."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


# ------------------------------------------------------------------------------------------- images

_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


def image_to_array(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` -> uint8 ``(H, W, C)``: rgb8 and bgr8 as RGB ``(H, W, 3)``, mono8 as ``(H, W, 1)``."""
    if msg.encoding not in _CHANNELS:
        raise ValueError(f"image on frame {msg.header.frame_id!r} has encoding {msg.encoding!r}; "
                         f"supported: {sorted(_CHANNELS)}")
    c = _CHANNELS[msg.encoding]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    buf = np.frombuffer(bytes(msg.data) if not isinstance(msg.data, (bytes, bytearray)) else msg.data,
                        dtype=np.uint8)
    if step < w * c or buf.size < h * step:
        raise ValueError(f"image on frame {msg.header.frame_id!r}: {buf.size} bytes cannot hold {h}x{w}x{c} "
                         f"with row step {step}")
    # Rows may be padded to `step` bytes.
    image = buf[: h * step].reshape(h, step)[:, : w * c].reshape(h, w, c)
    if msg.encoding == "bgr8":
        image = image[..., ::-1]
    return np.ascontiguousarray(image)


def array_to_image(arr: np.ndarray, stamp: float | Time, frame_id: str = "", encoding: str = "rgb8") -> Image:
    """uint8 ``(H, W, 3)`` RGB (or ``(H, W)`` / ``(H, W, 1)`` for mono8) -> ``sensor_msgs/Image``."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"array_to_image wants uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if encoding not in _CHANNELS or arr.ndim != 3 or arr.shape[2] != _CHANNELS[encoding]:
        raise ValueError(f"cannot publish an array of shape {arr.shape} as {encoding!r} "
                         f"(supported: {sorted(_CHANNELS)})")
    if encoding == "bgr8":
        arr = arr[..., ::-1]
    h, w, c = arr.shape
    return Image(header=header(stamp, frame_id), height=h, width=w, encoding=encoding, is_bigendian=0,
                 step=w * c, data=np.ascontiguousarray(arr).tobytes())


def depth_to_image(depth: np.ndarray, stamp: float | Time, frame_id: str = "") -> Image:
    """float ``(H, W)`` (or ``(H, W, 1)``) depth in metres -> ``sensor_msgs/Image`` ``32FC1`` (REP-118)."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise ValueError(f"a depth image is (H, W) metres, got shape {depth.shape}")
    h, w = depth.shape
    return Image(header=header(stamp, frame_id), height=h, width=w, encoding="32FC1", is_bigendian=0, step=4 * w,
                 data=np.ascontiguousarray(depth).tobytes())


# ------------------------------------------------------------------------------------- point clouds

_POINT_DTYPES = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
                 PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4",
                 PointField.FLOAT64: "f8"}


def pointcloud2_to_array(msg: PointCloud2) -> np.ndarray:
    """``PointCloud2`` -> float32 ``(N, 3)`` xyz, or ``(N, 6)`` xyz + rgb in ``[0, 1]`` when the cloud has
    colour (a packed ``rgb``/``rgba`` field, or ``r``, ``g``, ``b`` fields). Points with a NaN coordinate
    (unorganised returns) are dropped."""
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in "xyz" if n not in fields]
    if missing:
        raise ValueError(f"point cloud on frame {msg.header.frame_id!r} has no {missing} field(s); "
                         f"it has {sorted(fields)}")
    endian = ">" if msg.is_bigendian else "<"
    dtype = np.dtype({"names": [f.name for f in msg.fields],
                      "formats": [endian + _POINT_DTYPES[f.datatype] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    n = int(msg.width) * int(msg.height)
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if raw.size < n * msg.point_step:
        raise ValueError(f"point cloud on frame {msg.header.frame_id!r}: {raw.size} bytes for {n} points "
                         f"of {msg.point_step}")
    if msg.height > 1 and msg.row_step != msg.width * msg.point_step:
        rows = raw[: msg.height * msg.row_step].reshape(msg.height, msg.row_step)[:, : msg.width * msg.point_step]
        raw = np.ascontiguousarray(rows).reshape(-1)
    points = raw[: n * msg.point_step].view(dtype)
    xyz = np.stack([points[k].astype(np.float32) for k in "xyz"], axis=1)
    colour = None
    packed = "rgb" if "rgb" in fields else "rgba" if "rgba" in fields else None
    if packed is not None:
        bits = np.ascontiguousarray(points[packed]).view(np.uint32)
        colour = np.stack([(bits >> 16) & 255, (bits >> 8) & 255, bits & 255], axis=1).astype(np.float32) / 255.0
    elif all(k in fields for k in "rgb"):
        colour = np.stack([points[k].astype(np.float32) for k in "rgb"], axis=1)
        if fields["r"].datatype == PointField.UINT8:
            colour /= 255.0
    keep = np.all(np.isfinite(xyz), axis=1)
    out = xyz if colour is None else np.concatenate([xyz, colour], axis=1)
    return np.ascontiguousarray(out[keep])


def array_to_pointcloud2(points: np.ndarray, stamp: float | Time, frame_id: str = "world") -> PointCloud2:
    """float ``(N, 3)`` xyz or ``(N, 6)`` xyz + rgb in ``[0, 1]`` -> an unorganised ``PointCloud2``
    (float32 x, y, z and, with colour, the packed ``rgb`` field that RViz and PCL read)."""
    points = np.asarray(points, dtype=np.float32)
    if points.ndim != 2 or points.shape[1] not in (3, 6):
        raise ValueError(f"points must be (N, 3) or (N, 6), got {points.shape}")
    names = ["x", "y", "z"] + (["rgb"] if points.shape[1] == 6 else [])
    fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, n in enumerate(names)]
    record = np.empty((len(points), len(names)), dtype=np.float32)
    record[:, :3] = points[:, :3]
    if points.shape[1] == 6:
        rgb = np.clip(np.round(points[:, 3:] * 255.0), 0, 255).astype(np.uint32)
        record[:, 3] = ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)
    step = 4 * len(names)
    return PointCloud2(header=header(stamp, frame_id), height=1, width=len(points), fields=fields,
                       is_bigendian=False, point_step=step, row_step=step * len(points), is_dense=True,
                       data=record.tobytes())


# -------------------------------------------------------------------------------------------- poses


def pose_to_array(pose: Pose | PoseStamped) -> np.ndarray:
    """``Pose`` (or ``PoseStamped``) -> float64 ``(7,)``: position, then the quaternion ``wxyz``."""
    pose = getattr(pose, "pose", pose)
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.w, q.x, q.y, q.z], dtype=np.float64)


def array_to_pose(arr) -> Pose:
    """``(7,)`` position + quaternion ``wxyz`` -> ``Pose`` (whose quaternion is ``xyzw``)."""
    arr = np.asarray(arr, dtype=np.float64).reshape(-1)
    if arr.shape != (7,):
        raise ValueError(f"a pose is 7 values (position, quaternion wxyz), got shape {arr.shape}")
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in arr[:3])
    pose.orientation.w, pose.orientation.x, pose.orientation.y, pose.orientation.z = (float(v) for v in arr[3:])
    return pose


def pose_stamped(arr, stamp: float | Time, frame_id: str = "world") -> PoseStamped:
    return PoseStamped(header=header(stamp, frame_id), pose=array_to_pose(arr))


def posearray_to_array(msg: PoseArray) -> np.ndarray:
    """``PoseArray`` -> ``(K, 7)`` (position, ``wxyz``)."""
    return np.array([pose_to_array(p) for p in msg.poses], dtype=np.float64).reshape(-1, 7)


def array_to_posearray(arr, stamp: float | Time, frame_id: str = "world") -> PoseArray:
    arr = np.asarray(arr, dtype=np.float64).reshape(-1, 7)
    return PoseArray(header=header(stamp, frame_id), poses=[array_to_pose(a) for a in arr])


# ------------------------------------------------------------------------------------------ odometry


def odometry_to_state(msg: Odometry) -> np.ndarray:
    """``Odometry`` -> the quadrotor ``state`` head ``(13,)``: position (world), quaternion ``wxyz``,
    linear velocity (world: rotated from the message's child/body frame), angular velocity (body)."""
    pose = pose_to_array(msg.pose.pose)
    lin, ang = msg.twist.twist.linear, msg.twist.twist.angular
    v_body = np.array([lin.x, lin.y, lin.z])
    v_world = quat_to_matrix(pose[3:]) @ v_body
    return np.concatenate([pose, v_world, [ang.x, ang.y, ang.z]])


def state_to_odometry(state, stamp: float | Time, frame_id: str = "world", child_frame_id: str = "base_link"
                      ) -> Odometry:
    """Inverse of :func:`odometry_to_state`: ``(13+,)`` state -> ``Odometry`` with the twist in the body frame."""
    state = np.asarray(state, dtype=np.float64).reshape(-1)
    if state.size < 13:
        raise ValueError(f"a quadrotor state has at least 13 values, got {state.size}")
    msg = Odometry(header=header(stamp, frame_id), child_frame_id=child_frame_id)
    msg.pose.pose = array_to_pose(state[:7])
    v_body = quat_to_matrix(state[3:7]).T @ state[7:10]
    t = msg.twist.twist
    t.linear.x, t.linear.y, t.linear.z = (float(v) for v in v_body)
    t.angular.x, t.angular.y, t.angular.z = (float(v) for v in state[10:13])
    return msg


# ---------------------------------------------------------------------------------------- joints


def jointstate_positions(msg: JointState, names: Sequence[str], field: str = "position") -> np.ndarray:
    """The ``field`` values (position | velocity | effort) of ``names``, in that order: ``(n,)``."""
    values = getattr(msg, field)
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [n for n in names if n not in index]
    if missing:
        raise KeyError(f"joint_states lacks joints {missing} (it has {list(msg.name)})")
    if len(values) < len(msg.name):
        raise ValueError(f"joint_states has {len(msg.name)} names but {len(values)} {field} values")
    return np.array([values[index[n]] for n in names], dtype=np.float64)


def joint_state(names: Sequence[str], positions, stamp: float | Time, velocities=None) -> JointState:
    msg = JointState(header=header(stamp), name=list(names), position=[float(p) for p in positions])
    if velocities is not None:
        msg.velocity = [float(v) for v in velocities]
    return msg


def joint_trajectory(names: Sequence[str], positions, dt: float, stamp: float | Time,
                     start: float | None = None) -> JointTrajectory:
    """``(H, n)`` positions, one per control period ``dt`` -> ``JointTrajectory``.

    Point ``i`` has ``time_from_start = start + i * dt`` (``start`` defaults to ``dt``: the first point is
    reached one period after ``stamp``, as a controller cannot jump). ``stamp`` is when the trajectory
    starts; 0 means "now" for ros2_control's joint trajectory controller.
    """
    positions = np.asarray(positions, dtype=np.float64)
    if positions.ndim == 1:
        positions = positions[None]
    if positions.ndim != 2 or positions.shape[1] != len(names):
        raise ValueError(f"positions must be (H, {len(names)}) for joints {list(names)}, got {positions.shape}")
    start = dt if start is None else start
    points = [JointTrajectoryPoint(positions=[float(v) for v in row],
                                   time_from_start=seconds_to_duration(start + i * dt))
              for i, row in enumerate(positions)]
    return JointTrajectory(header=header(stamp), joint_names=list(names), points=points)


def trajectory_to_arrays(msg: JointTrajectory, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``JointTrajectory`` -> (times ``(H,)`` from its start in s, positions ``(H, n)`` in the order of
    ``names``). Clear error if a joint is missing or a point has no positions."""
    index = {name: i for i, name in enumerate(msg.joint_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise KeyError(f"joint trajectory lacks joints {missing} (it has {list(msg.joint_names)})")
    cols = [index[n] for n in names]
    times, rows = [], []
    for k, p in enumerate(msg.points):
        if len(p.positions) != len(msg.joint_names):
            raise ValueError(f"trajectory point {k} has {len(p.positions)} positions for "
                             f"{len(msg.joint_names)} joints")
        times.append(duration_to_seconds(p.time_from_start))
        rows.append([p.positions[c] for c in cols])
    return np.array(times, dtype=np.float64), np.array(rows, dtype=np.float64).reshape(-1, len(names))


# ------------------------------------------------------------------------------------------ twists


def twist_stamped(v, stamp: float | Time, frame: str = "world") -> TwistStamped:
    """``(4,)`` vx, vy, vz (in ``frame``, ENU world by default) and yaw rate -> ``TwistStamped``."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.shape != (4,):
        raise ValueError(f"a velocity set point is (vx, vy, vz, yaw_rate), got shape {v.shape}")
    msg = TwistStamped(header=header(stamp, frame))
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(x) for x in v[:3])
    msg.twist.angular.z = float(v[3])
    return msg


def float32_array(values) -> Float32MultiArray:
    """``(n,)`` values (e.g. normalised motor commands) -> ``std_msgs/Float32MultiArray`` (one unlabelled dim)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    return Float32MultiArray(data=values.tolist())


def float32_array_values(msg: Float32MultiArray, size: int) -> np.ndarray:
    """``Float32MultiArray`` -> ``(size,)`` float64; a clear error for another length."""
    values = np.asarray(msg.data, dtype=np.float64)
    if values.shape != (size,):
        raise ValueError(f"expected {size} values, the message has {values.size}")
    return values


def twist_to_setpoint(msg: TwistStamped) -> np.ndarray:
    """``TwistStamped`` -> ``(4,)`` vx, vy, vz, yaw rate."""
    t = msg.twist
    return np.array([t.linear.x, t.linear.y, t.linear.z, t.angular.z], dtype=np.float64)


# ------------------------------------------------------------------------------ PX4 (NED / FRD axes)
# PX4 works in NED world axes and FRD body axes; ROS in ENU and FLU (REP-103). As px4_ros_com's
# frame_transforms.h: a world vector swaps x and y and negates z; a body vector negates y and z; an attitude
# (FRD body -> NED world) becomes q_ENU<-NED ⊗ q ⊗ q_FRD<-FLU. Each of these maps is its own inverse.

_NED_ENU = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
_FRD_FLU = np.diag([1.0, -1.0, -1.0])
_Q_ENU_NED = np.array([0.0, np.sqrt(0.5), np.sqrt(0.5), 0.0])  # wxyz: π about (x + y)/√2
_Q_FRD_FLU = np.array([0.0, 1.0, 0.0, 0.0])  # wxyz: π about x
PX4_VELOCITY_FRAMES = {1: "NED", 3: "BODY_FRD"}  # VehicleOdometry.VELOCITY_FRAME_*; 2 (FRD world) is refused


def ned_to_enu(v) -> np.ndarray:
    """World vectors ``(..., 3)`` between NED and ENU (either way)."""
    return np.asarray(v, dtype=np.float64) @ _NED_ENU.T


def frd_to_flu(v) -> np.ndarray:
    """Body vectors ``(..., 3)`` between FRD and FLU (either way)."""
    return np.asarray(v, dtype=np.float64) @ _FRD_FLU.T


def quat_multiply(a, b) -> np.ndarray:
    """Hamilton product of ``wxyz`` quaternions ``a ⊗ b``."""
    aw, ax, ay, az = np.asarray(a, dtype=np.float64)
    bw, bx, by, bz = np.asarray(b, dtype=np.float64)
    return np.array([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw])


def quat_ned_frd_to_enu_flu(q_wxyz) -> np.ndarray:
    """PX4's attitude (FRD body -> NED world, ``wxyz``) as ROS's (FLU body -> ENU world, ``wxyz``, w >= 0)."""
    q = quat_multiply(quat_multiply(_Q_ENU_NED, q_wxyz), _Q_FRD_FLU)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def px4_odometry_to_state(position, q, velocity, angular_velocity, velocity_frame: int = 1) -> np.ndarray:
    """``VehicleOdometry``'s arrays (NED position, FRD->NED ``q`` wxyz, velocity in ``velocity_frame``, FRD
    body rates) -> the quadrotor ``state`` head ``(13,)`` in ROS axes, as :func:`odometry_to_state` gives it."""
    if velocity_frame not in PX4_VELOCITY_FRAMES:
        raise ValueError(f"VehicleOdometry velocity_frame {velocity_frame} is not supported; "
                         f"use {PX4_VELOCITY_FRAMES}")
    q = np.asarray(q, dtype=np.float64)
    velocity = np.asarray(velocity, dtype=np.float64)
    if velocity_frame == 3:  # body FRD -> NED world
        velocity = quat_to_matrix(q) @ velocity
    return np.concatenate([ned_to_enu(position), quat_ned_frd_to_enu_flu(q), ned_to_enu(velocity),
                           frd_to_flu(angular_velocity)])


def vehicle_odometry_to_state(msg) -> np.ndarray:
    """``px4_msgs/VehicleOdometry`` -> the quadrotor ``state`` head ``(13,)`` (see :func:`px4_odometry_to_state`)."""
    if msg.pose_frame != 1:  # POSE_FRAME_NED
        raise ValueError(f"VehicleOdometry pose_frame {msg.pose_frame} is not NED (1); PX4's local frame is "
                         "needed for position")
    return px4_odometry_to_state(msg.position, msg.q, msg.velocity, msg.angular_velocity, msg.velocity_frame)


def px4_velocity_setpoint(v) -> tuple[np.ndarray, float]:
    """``(4,)`` ENU vx, vy, vz and yaw rate (about ENU z, counter-clockwise) -> PX4's NED velocity ``(3,)`` and
    yawspeed (about NED z, i.e. down: the sign flips)."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.shape != (4,):
        raise ValueError(f"a velocity set point is (vx, vy, vz, yaw_rate), got shape {v.shape}")
    return ned_to_enu(v[:3]), -float(v[3])


def trajectory_setpoint(v, now: float):
    """``px4_msgs/TrajectorySetpoint`` commanding velocity only (position, acceleration, jerk and yaw NaN:
    PX4 ignores them). ``timestamp`` in µs of this node's clock, as px4_ros_com's examples do."""
    from px4_msgs.msg import TrajectorySetpoint

    velocity, yawspeed = px4_velocity_setpoint(v)
    nan3 = [float("nan")] * 3
    return TrajectorySetpoint(timestamp=int(now * 1e6), position=nan3, velocity=[float(x) for x in velocity],
                              acceleration=nan3, jerk=nan3, yaw=float("nan"), yawspeed=yawspeed)


def offboard_control_mode(now: float, **enabled: bool):
    """``px4_msgs/OffboardControlMode``: PX4's "proof of life" for offboard control, e.g. ``velocity=True``."""
    from px4_msgs.msg import OffboardControlMode

    return OffboardControlMode(timestamp=int(now * 1e6), **enabled)
