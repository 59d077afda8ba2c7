"""Closed loop over DDS on loopback: sim bridge and policy node as separate processes, one short
episode each for an arm (robosuite Lift, joint positions, naive executor) and a quadrotor (hover,
velocity set points, temporal ensemble; and a flow policy with real-time chunking), then the next
episode is started through ``sim/reset``."""

import json
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import TwistStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float32MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ros_nodes import convert  # noqa: E402
from ros_nodes.qos import COMMAND_QOS, SENSOR_QOS, STATUS_QOS  # noqa: E402
from tests.ros.conftest import wait_for  # noqa: E402


def last_json(messages):
    return json.loads(messages[-1][1].data) if messages else {}


def run_episode(launch_node, ros_node, ckpt, profile, task, max_steps, sensor, command, executor="naive"):
    episodes = ros_node.collect(String, "sim/episode", STATUS_QOS)
    metrics = ros_node.collect(String, "policy/metrics", 10)
    sensed = ros_node.collect(*sensor, SENSOR_QOS)
    commands = ros_node.collect(*command, 10)
    bridge = launch_node("robopolicy-sim-bridge", {"task": task, "max_steps": max_steps})
    policy = launch_node("robopolicy-policy-node", {"checkpoint": ckpt, "profile": profile, "torch_threads": 1,
                                                    "executor": executor})

    def done():
        assert bridge.running() and policy.running(), bridge.log() + policy.log()
        return last_json(episodes).get("state") == "done"

    wait_for(done, 120, what=f"the {task} episode to end")
    report = last_json(episodes)
    wait_for(lambda: metrics, 10, what="policy metrics")
    # The next episode: new seed, armed until the policy's first command, then running again.
    reply = ros_node.call(Trigger, "sim/reset")
    assert reply.success and json.loads(reply.message)["seed"] == 1001
    wait_for(lambda: last_json(episodes).get("state") == "running", 30, what="episode 1 to run")
    assert bridge.running() and policy.running(), bridge.log() + policy.log()
    return report, last_json(metrics), sensed, commands


def test_arm_closed_loop(launch_node, ros_node, tiny_checkpoints):
    ckpt, _ = tiny_checkpoints["arm"]
    report, metrics, sensed, commands = run_episode(
        launch_node, ros_node, ckpt, "sim_panda", "robosuite-Lift-joint-v0", 40,
        (JointState, "joint_states"), (JointTrajectory, "joint_trajectory"))
    assert report["seed"] == 1000 and report["episode"] == 0
    assert report["steps"] == 40 or report["success"]
    # the policy drove the episode, not only the hold (a loaded 2-core machine starves some ticks)
    assert report["commands"] >= report["steps"] // 5
    assert metrics["counters"]["chunks"] >= 5 and metrics["e2e_latency_ms"]["n"] >= 5
    # The arm moved: the joint states the bridge published over the episode differ.
    joints = np.array([convert.jointstate_positions(m, [f"panda_joint{i}" for i in range(1, 8)])
                       for _, m in sensed])
    assert np.ptp(joints, axis=0).max() > 1e-3
    assert all(len(m.points) == 1 for _, m in commands)


def test_quadrotor_closed_loop(launch_node, ros_node, tiny_checkpoints):
    ckpt, _ = tiny_checkpoints["quadrotor"]
    report, metrics, sensed, commands = run_episode(
        launch_node, ros_node, ckpt, "sim_quadrotor", "quadrotor-hover-v0", 100,
        (Odometry, "odom"), (TwistStamped, "cmd_vel"), executor="temporal_ensemble")
    assert report["steps"] == 100 or report["info"].get("crashed")
    assert report["commands"] >= report["steps"] // 5
    assert "rms_position_error" in report["info"] and np.isfinite(report["info"]["rms_position_error"])
    assert metrics["counters"]["chunks"] >= 10  # the ensemble re-plans whenever the worker is free
    heights = [convert.odometry_to_state(m)[2] for _, m in sensed]
    assert len(heights) > 50 and 0.1 < np.median(heights) < 4.0


def test_bridge_refuses_a_task_its_profile_cannot_drive(launch_node):
    # robosuite-Lift-v0 takes ee_delta actions; the sim_panda profile sends joint positions.
    bridge = launch_node("robopolicy-sim-bridge", {"task": "robosuite-Lift-v0", "profile": "sim_panda"})
    assert bridge.wait_exit(timeout=60) == 2
    assert "takes 7-d ee_delta actions; profile 'sim_panda' sends 8-d joint_pos" in bridge.log()


def test_quadrotor_closed_loop_with_real_time_chunking(launch_node, ros_node, tiny_checkpoints):
    ckpt, _ = tiny_checkpoints["quadrotor-flow"]
    report, metrics, sensed, commands = run_episode(
        launch_node, ros_node, ckpt, "sim_quadrotor", "quadrotor-hover-v0", 60,
        (Odometry, "odom"), (TwistStamped, "cmd_vel"), executor="rtc")
    assert report["steps"] == 60 or report["info"].get("crashed")
    assert report["commands"] >= report["steps"] // 5
    # every chunk after the first was inpainted onto the one running
    assert metrics["counters"]["guided_chunks"] >= 3
    assert metrics["counters"]["guided_chunks"] >= metrics["counters"]["chunks"] - 2


def test_motor_level_quadrotor_closed_loop(launch_node, ros_node, tiny_checkpoints):
    """A motor-command policy (profile sim_quadrotor_motors): Float32MultiArray at 100 Hz, within [-1, 1]."""
    ckpt, _ = tiny_checkpoints["quadrotor-motors"]
    report, metrics, sensed, commands = run_episode(
        launch_node, ros_node, ckpt, "sim_quadrotor_motors", "quadrotor-hover-motors-v0", 100,
        (Odometry, "odom"), (Float32MultiArray, "motor_commands"))
    assert report["steps"] == 100 or report["info"].get("crashed")
    assert report["commands"] >= report["steps"] // 5
    assert metrics["counters"]["chunks"] >= 5
    values = np.array([m.data for _, m in commands])
    assert values.shape[1] == 4 and np.all(np.abs(values) <= 1.0)


def test_motor_level_failsafe_holds_position_when_commands_stop(launch_node, ros_node):
    """Motor commands that stop (a node that holds by falling silent, or dies) hand the vehicle to the
    bridge's failsafe, which holds the position where they stopped, as PX4's mc_raptor does."""
    episodes = ros_node.collect(String, "sim/episode", STATUS_QOS)
    odom = ros_node.collect(Odometry, "odom", SENSOR_QOS)
    motors = ros_node.node.create_publisher(Float32MultiArray, "motor_commands", COMMAND_QOS)
    bridge = launch_node("robopolicy-sim-bridge", {"task": "robopolicy/quadrotor-hover-motors-v0",
                                                   "max_steps": 300})
    wait_for(lambda: odom and last_json(episodes).get("state") == "armed", 60, what="the armed bridge")
    # Commands that would let it fall (a quarter of full thrust), for 0.1 s; then nothing.
    for _ in range(10):
        motors.publish(convert.float32_array([0.0, 0.0, 0.0, 0.0]))
        time.sleep(0.01)
    stopped_at = time.monotonic()
    wait_for(lambda: last_json(episodes).get("state") == "done", 30, what="the episode to end")
    report = last_json(episodes)
    assert bridge.running(), bridge.log()
    assert report["steps"] == 300 and not report["info"].get("crashed"), report
    assert report["failsafe_steps"] >= 200  # all but the commanded 0.1 s and the 0.2 s timeout
    positions = np.array([convert.odometry_to_state(m)[:3] for t, m in odom if t > stopped_at])
    held = positions[-50:]  # the last half second
    assert np.ptp(held, axis=0).max() < 0.05  # holding still
    assert np.linalg.norm(held[-1] - positions[0]) < 0.3  # near where the commands stopped
