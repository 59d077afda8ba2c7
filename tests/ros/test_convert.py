"""Message <-> numpy conversions at the ROS boundary: round trips, quaternion order, frames, errors."""

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import Pose  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from ros_nodes import convert  # noqa: E402


def test_stamps_round_trip_to_the_nanosecond():
    stamp = convert.seconds_to_stamp(1712345678.123456789)
    assert stamp.sec == 1712345678 and abs(stamp.nanosec - 123456789) < 300  # float64 resolution at 1.7e9 s
    assert convert.stamp_to_seconds(convert.seconds_to_stamp(12.5)) == 12.5
    with pytest.raises(ValueError, match="non-negative"):
        convert.seconds_to_stamp(-1.0)


def test_pose_quaternion_order_is_converted_at_the_boundary():
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = 1.0, 2.0, 3.0
    # ROS stores xyzw: a 90 degree turn about z is (0, 0, s, c).
    s = np.sqrt(0.5)
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = 0.0, 0.0, s, s
    arr = convert.pose_to_array(pose)
    np.testing.assert_allclose(arr, [1, 2, 3, s, 0, 0, s])  # stack: wxyz
    back = convert.array_to_pose(arr)
    assert (back.orientation.w, back.orientation.z, back.orientation.x) == (s, s, 0.0)
    np.testing.assert_allclose(convert.xyzw_to_wxyz([0, 0, s, s]), [s, 0, 0, s])
    np.testing.assert_allclose(convert.wxyz_to_xyzw([s, 0, 0, s]), [0, 0, s, s])
    poses = np.array([[1, 2, 3, 1, 0, 0, 0], [4, 5, 6, 0, 1, 0, 0]], dtype=float)
    np.testing.assert_allclose(convert.posearray_to_array(convert.array_to_posearray(poses, 1.0)), poses)


def test_odometry_body_twist_becomes_world_velocity():
    # Yawed 90 degrees: body x points along world y. The vehicle flies forward (body x) at 1 m/s.
    c = np.sqrt(0.5)
    state = np.array([0.5, -1, 2, c, 0, 0, c, 0.0, 1.0, 0.2, 0.1, -0.2, 0.3])  # world velocity (0, 1, 0.2)
    msg = convert.state_to_odometry(state, 3.0)
    lin = msg.twist.twist.linear
    np.testing.assert_allclose([lin.x, lin.y, lin.z], [1.0, 0.0, 0.2], atol=1e-12)  # body frame in the message
    assert msg.child_frame_id == "base_link" and msg.pose.pose.orientation.w == pytest.approx(c)
    np.testing.assert_allclose(convert.odometry_to_state(msg), state, atol=1e-12)


def test_images_rgb_bgr_mono_and_row_padding():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(convert.image_to_array(convert.array_to_image(rgb, 1.0)), rgb)
    np.testing.assert_array_equal(convert.image_to_array(convert.array_to_image(rgb, 1.0, encoding="bgr8")), rgb)
    bgr = convert.array_to_image(rgb, 1.0, encoding="bgr8")
    assert bytes(bgr.data)[:3] == bytes(rgb[0, 0, ::-1])
    mono = rgb[..., 0]
    assert convert.image_to_array(convert.array_to_image(mono, 1.0, encoding="mono8")).shape == (4, 5, 1)
    padded = Image(height=2, width=2, encoding="rgb8", step=8, data=bytes(range(16)))
    np.testing.assert_array_equal(convert.image_to_array(padded)[1, 1], [11, 12, 13])
    with pytest.raises(ValueError, match="encoding '16UC1'"):
        convert.image_to_array(Image(height=1, width=1, encoding="16UC1", step=2, data=b"\0\0"))


def test_pointcloud_round_trip_with_and_without_colour():
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    np.testing.assert_array_equal(convert.pointcloud2_to_array(convert.array_to_pointcloud2(xyz, 1.0)), xyz)
    colour = np.round(rng.uniform(0, 1, (50, 3)) * 255) / 255
    cloud = np.concatenate([xyz, colour], axis=1).astype(np.float32)
    back = convert.pointcloud2_to_array(convert.array_to_pointcloud2(cloud, 1.0))
    assert back.shape == (50, 6)
    np.testing.assert_allclose(back, cloud, atol=1e-6)


def test_joint_states_and_trajectories():
    msg = convert.joint_state(["b", "a", "c"], [2.0, 1.0, 3.0], 1.0)
    np.testing.assert_array_equal(convert.jointstate_positions(msg, ["a", "b"]), [1.0, 2.0])
    with pytest.raises(KeyError, match=r"lacks joints \['gripper'\]"):
        convert.jointstate_positions(msg, ["a", "gripper"])
    positions = np.arange(6.0).reshape(3, 2)
    traj = convert.joint_trajectory(["j1", "j2"], positions, dt=0.05, stamp=10.0)
    assert [convert.duration_to_seconds(p.time_from_start) for p in traj.points] == pytest.approx([0.05, 0.1, 0.15])
    times, back = convert.trajectory_to_arrays(traj, ["j2", "j1"])
    np.testing.assert_array_equal(back, positions[:, ::-1])
    with pytest.raises(ValueError, match=r"\(H, 2\)"):
        convert.joint_trajectory(["j1", "j2"], np.zeros((3, 3)), 0.05, 0.0)


def test_twist_set_point():
    msg = convert.twist_stamped([0.1, -0.2, 0.3, 0.4], 2.0)
    assert msg.header.frame_id == "world" and msg.twist.angular.x == 0.0
    np.testing.assert_allclose(convert.twist_to_setpoint(msg), [0.1, -0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="yaw_rate"):
        convert.twist_stamped([0.0, 0.0, 0.0], 0.0)


# ---- PX4 axes: NED world / FRD body <-> ENU / FLU (px4_ros_com frame_transforms.h) -------------------------


def test_ned_enu_vectors_and_body_rates():
    np.testing.assert_array_equal(convert.ned_to_enu([1.0, 2.0, 3.0]), [2.0, 1.0, -3.0])  # north 1, east 2, down 3
    np.testing.assert_array_equal(convert.frd_to_flu([0.1, 0.2, 0.3]), [0.1, -0.2, -0.3])
    v = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(convert.ned_to_enu(convert.ned_to_enu(v)), v)  # its own inverse


def test_px4_attitude_becomes_ros_attitude():
    # Level, nose north (PX4's identity) is ENU yaw +90°; level, nose east (PX4 yaw +90°) is ENU identity.
    c = np.cos(np.pi / 4)
    np.testing.assert_allclose(convert.quat_ned_frd_to_enu_flu([1, 0, 0, 0]), [c, 0, 0, c], atol=1e-12)
    np.testing.assert_allclose(convert.quat_ned_frd_to_enu_flu([c, 0, 0, c]), [1, 0, 0, 0], atol=1e-12)
    # Any attitude: the same physical rotation, R_enu_flu = A R_ned_frd B with A, B the axis swaps.
    a, b = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]]), np.diag([1, -1, -1])
    for q in np.random.default_rng(1).normal(size=(20, 4)):
        q /= np.linalg.norm(q)
        np.testing.assert_allclose(convert.quat_to_matrix(convert.quat_ned_frd_to_enu_flu(q)),
                                   a @ convert.quat_to_matrix(q) @ b, atol=1e-12)


def test_px4_odometry_gives_the_state_ros_odometry_gives():
    """The same vehicle state sent as ROS Odometry (ENU, body-frame twist) and as PX4's VehicleOdometry arrays
    (NED, world- or body-frame velocity) reads back as the same 13 values."""
    rng = np.random.default_rng(2)
    q_enu = rng.normal(size=4)
    q_enu /= np.linalg.norm(q_enu)
    q_enu *= np.sign(q_enu[0])
    state = np.concatenate([[1.0, -2.0, 3.0], q_enu, [0.5, -0.25, 0.1], [0.01, 0.02, -0.3]])
    from_ros = convert.odometry_to_state(convert.state_to_odometry(state, 1.0))
    # the same state in PX4's axes: inverse maps (each is its own inverse; q_NED<-ENU ⊗ q ⊗ q_FLU<-FRD)
    q_ned = convert.quat_multiply(convert.quat_multiply(convert._Q_ENU_NED, q_enu), convert._Q_FRD_FLU)
    position, velocity = convert.ned_to_enu(state[:3]), convert.ned_to_enu(state[7:10])
    rates = convert.frd_to_flu(state[10:13])
    world = convert.px4_odometry_to_state(position, q_ned, velocity, rates, velocity_frame=1)
    body_velocity = convert.quat_to_matrix(q_ned).T @ velocity
    body = convert.px4_odometry_to_state(position, q_ned, body_velocity, rates, velocity_frame=3)
    for read in (world, body):
        np.testing.assert_allclose(read, from_ros, atol=1e-9)
    with pytest.raises(ValueError, match="velocity_frame 2 is not supported"):
        convert.px4_odometry_to_state(position, q_ned, velocity, rates, velocity_frame=2)


def test_px4_velocity_setpoint_is_ned_with_yaw_speed_about_down():
    velocity, yawspeed = convert.px4_velocity_setpoint([1.0, 0.5, 0.2, 0.3])  # east 1, north .5, up .2, CCW
    np.testing.assert_array_equal(velocity, [0.5, 1.0, -0.2])
    assert yawspeed == -0.3
    with pytest.raises(ValueError, match="vx, vy, vz, yaw_rate"):
        convert.px4_velocity_setpoint([1.0, 0.0, 0.0])
