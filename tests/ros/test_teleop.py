"""robopolicy-teleop as a separate process over DDS: key bytes written into a real pty come out as the
robot's commands (a quadrotor's velocity set points, an arm's jogged joint targets)."""

import os
import pty
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import TwistStamped  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from hardware.profile import load_profile  # noqa: E402
from ros_nodes import convert  # noqa: E402
from ros_nodes.qos import COMMAND_QOS, SENSOR_QOS  # noqa: E402
from ros_nodes.teleop import JointJog, QuadrotorMapping  # noqa: E402
from tests.ros.conftest import wait_for  # noqa: E402
from ros_nodes.harness import wait_alive  # noqa: E402

PANDA = load_profile("sim_panda")
ARM_JOINTS = list(PANDA.action_names[:-1])


@pytest.fixture
def keyboard():
    """A pty: the node reads keys from the slave by path, the test types into the master."""
    master, slave = pty.openpty()
    yield master, os.ttyname(slave)
    os.close(master)
    os.close(slave)


def test_quadrotor_mapping_scales_each_side_by_its_own_limit():
    px4 = QuadrotorMapping(load_profile("px4"), speed=0.5)  # vz in [-1.0, 1.5]
    np.testing.assert_allclose(px4(np.array([1.0, -1.0, 1.0, -1.0, 0, 0, 0])), [1.0, -1.0, 0.75, -0.3925])
    np.testing.assert_allclose(px4(np.array([0, 0, -1.0, 0.5, 0, 0, 0])), [0, 0, -0.5, 0.19625])


def test_joint_jog_anchors_at_the_measured_state_clamps_and_toggles_the_gripper():
    jog = JointJog(PANDA, speed=0.5)
    measured = np.array([0.0, 0.2, 0.0, -0.1, 0.0, 2.9, 0.8, np.nan])  # sim_panda's gripper is unmeasured
    assert not jog.start(np.full(8, np.nan))  # no joint state: no target, nothing to publish
    assert jog.start(measured)
    np.testing.assert_array_equal(jog.target[:7], measured[:7])
    assert jog.target[7] == -1.0  # gripper starts open (its lower limit)
    axes = np.array([1.0, 0, 0, 1.0, 0, 0, -1.0])
    out = jog(axes, dt=0.05)
    np.testing.assert_allclose(out[0], 0.5 * 2.175 * 0.05)
    assert out[3] == pytest.approx(-0.0698)  # joint 4 clamped at its upper limit
    np.testing.assert_allclose(out[6], 0.8 - 0.5 * 2.61 * 0.05)
    jog.toggle_gripper()
    assert jog.target[7] == 1.0
    jog.toggle_gripper()
    assert jog.target[7] == -1.0


def test_quadrotor_keys_become_velocity_set_points(launch_node, ros_node, keyboard):
    master, tty_path = keyboard
    commands = ros_node.collect(TwistStamped, "cmd_vel", COMMAND_QOS)
    node = launch_node("robopolicy-teleop", {"profile": "sim_quadrotor", "input": tty_path, "speed": 0.5})
    wait_alive(lambda: len(commands) > 5, 30, "set points from teleop", node)
    v = convert.twist_to_setpoint(commands[-1][1])
    np.testing.assert_array_equal(v, np.zeros(4))  # no key: hover, published all the same
    start = len(commands)
    time.sleep(0.5)
    rate = (len(commands) - start) / 0.5
    assert 15 < rate < 75, f"teleop published at {rate:.1f} Hz, the profile's control rate is 50 Hz"

    def latest_setpoint():
        return convert.twist_to_setpoint(commands[-1][1])

    os.write(master, b"w")  # forward: vx = 0.5 x 1.0 m/s
    wait_for(lambda: latest_setpoint()[0] == 0.5, 5, what="vx = 0.5 after 'w'")
    os.write(master, b"qf")  # yaw left and down, forward still held
    wait_for(lambda: np.array_equal(latest_setpoint(), [0.5, 0.0, -0.5, 0.5]), 5, what="'q' and 'f'")
    assert commands[-1][1].header.frame_id == "world"
    os.write(master, b"x")  # halt
    wait_for(lambda: np.array_equal(latest_setpoint(), np.zeros(4)), 5, what="zeros after 'x'")
    os.write(master, b"\x1b")  # Esc quits and the process exits by itself
    assert node.wait_exit(15) == 0
    assert "quit" in node.log()


def test_arm_keys_jog_joints_from_the_measured_state(launch_node, ros_node, keyboard):
    master, tty_path = keyboard
    trajectories = ros_node.collect(JointTrajectory, "joint_trajectory", COMMAND_QOS)
    joint_states = ros_node.node.create_publisher(JointState, "joint_states", SENSOR_QOS)
    node = launch_node("robopolicy-teleop", {"profile": "sim_panda", "input": tty_path, "speed": 0.5})
    wait_alive(lambda: ros_node.node.count_subscribers("joint_states") > 0, 30,
               "teleop subscribing to joint_states", node)
    time.sleep(0.5)
    assert trajectories == []  # no joint state yet: nothing is published (never a zero position)

    q0 = np.array([0.1, 0.2, -0.1, -2.0, 0.0, 2.0, 0.5])
    stop = threading.Event()

    def robot():
        while not stop.is_set():
            now = ros_node.node.get_clock().now().nanoseconds * 1e-9
            joint_states.publish(convert.joint_state([*ARM_JOINTS, "panda_finger_joint1"], [*q0, 0.04], now))
            time.sleep(0.05)

    thread = threading.Thread(target=robot, daemon=True)
    thread.start()
    try:
        wait_alive(lambda: trajectories, 10, "a trajectory once joint_states arrive", node)
        first = trajectories[0][1]
        assert first.joint_names == list(PANDA.action_names)  # gripper last, in the same message
        times, positions = convert.trajectory_to_arrays(first, PANDA.action_names)
        np.testing.assert_allclose(positions[0], [*q0, -1.0])
        assert times[0] == pytest.approx(1 / 20)  # reached one control period later

        os.write(master, b"1 ")  # joint 1 up, close the gripper
        def target(msg):
            return convert.trajectory_to_arrays(msg, PANDA.action_names)[1][0]

        wait_for(lambda: target(trajectories[-1][1])[0] > 0.3, 10, what="joint 1 jogged up")
        targets = np.array([target(m) for _, m in trajectories])
        steps = np.diff(targets[:, 0])
        moving = steps[steps > 0]
        # every tick moves joint 1 by speed x max_rate / rate = 0.5 x 2.175 / 20 rad, and nothing else moves
        np.testing.assert_allclose(moving, 0.5 * 2.175 / 20, rtol=1e-6)
        assert np.all(steps >= 0)
        np.testing.assert_allclose(targets[:, 1:7], np.broadcast_to(q0[1:], (len(targets), 6)))
        assert targets[-1, 7] == 1.0
    finally:
        stop.set()
        thread.join()
