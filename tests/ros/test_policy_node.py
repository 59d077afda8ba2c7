"""The policy node as a separate process over DDS: refusal, e-stop services, holding on stale input.

The test plays the robot: it publishes real sensor messages at the control rate, and listens to the
node's commands, status and metrics.
"""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import TwistStamped  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ros_nodes import convert  # noqa: E402
from ros_nodes.qos import STATUS_QOS  # noqa: E402
from tests.ros.conftest import wait_for  # noqa: E402
from tests.ros.sensors import ARM_JOINTS, Sensors, arm_sensors, first_state, quadrotor_sensors, status_of  # noqa: E402


def listen(ros, command_class, command_topic):
    commands = ros.collect(command_class, command_topic, 10)
    statuses = ros.collect(String, "policy/status", STATUS_QOS)
    metrics = ros.collect(String, "policy/metrics", 10)
    return commands, statuses, metrics


def test_refuses_a_checkpoint_the_robot_cannot_serve(launch_node, tiny_checkpoints, tmp_path):
    quad_ckpt, _ = tiny_checkpoints["quadrotor"]
    node = launch_node("robopolicy-policy-node", {"checkpoint": quad_ckpt, "profile": "sim_panda"})
    # A checkpoint that needs a camera the robot lacks: same weights, one more observation key on disk.
    arm_ckpt, _ = tiny_checkpoints["arm"]
    wrist = tmp_path / "wrist-ckpt"
    shutil.copytree(arm_ckpt, wrist)
    config = json.loads((wrist / "config.json").read_text())
    config["obs_keys"] = ["image_wrist", "state"]
    config["policy_config"]["obs_shapes"]["image_wrist"] = [84, 84, 3]
    (wrist / "config.json").write_text(json.dumps(config))
    other = launch_node("robopolicy-policy-node", {"checkpoint": wrist, "profile": "sim_panda"})
    # Real-time chunking guides a flow policy's velocity field; a diffusion checkpoint has none.
    rtc = launch_node("robopolicy-policy-node", {"checkpoint": quad_ckpt, "profile": "sim_quadrotor",
                                                 "executor": "rtc"})
    # Vehicles whose messages are not here: PX4's come from the vehicle's workspace; Crazyswarm2's
    # VelocityWorld has a yaw-rate unit we have not verified, so the node does not publish it at all.
    px4 = launch_node("robopolicy-policy-node", {"checkpoint": quad_ckpt, "profile": "px4"})
    crazyflie = launch_node("robopolicy-policy-node", {"checkpoint": quad_ckpt, "profile": "crazyflie"})

    assert node.wait_exit(timeout=90) == 2
    log = node.log()
    assert "refused to start" in log and "'state' has 13 values" in log
    assert "'velocity_setpoint', this robot takes 'joint_pos'" in log and "4-d actions" in log
    assert other.wait_exit(timeout=90) == 2
    assert "observation keys ['image_wrist'] are not supplied by this robot" in other.log()
    assert rtc.wait_exit(timeout=90) == 2
    assert "executor 'rtc' inpaints with a flow policy's velocity field; this checkpoint is 'diffusion'" in rtc.log()
    assert px4.wait_exit(timeout=90) == 2
    assert "'px4_msgs/msg/" in px4.log() and "build PX4/px4_msgs" in px4.log()
    assert crazyflie.wait_exit(timeout=90) == 2
    assert "commands with crazyflie_interfaces/msg/VelocityWorld; this node publishes" in crazyflie.log()


def test_the_refusal_check_reads_config_json_without_torch(tiny_checkpoints):
    """Refusing is instant: the node and the check it runs before loading weights never import torch."""
    ckpt, _ = tiny_checkpoints["quadrotor"]
    code = ("import sys, ros_nodes.policy_node\n"
            "from hardware.profile import check_checkpoint, load_profile\n"
            "from robopolicy.train.checkpoint_config import read_config\n"
            f"check_checkpoint(load_profile('sim_quadrotor'), read_config({str(ckpt)!r}))\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_quadrotor_estop_reset_and_hover_on_stale_odometry(launch_node, ros_node, tiny_checkpoints):
    ckpt, store = tiny_checkpoints["quadrotor"]
    state = first_state(store)
    sensors = Sensors(ros_node, quadrotor_sensors(ros_node, state), 50.0)
    commands, statuses, metrics = listen(ros_node, TwistStamped, "cmd_vel")
    node = launch_node("robopolicy-policy-node", {"checkpoint": ckpt, "profile": "sim_quadrotor",
                                                  "torch_threads": 1})
    try:
        def recent():
            return np.array([convert.twist_to_setpoint(m) for _, m in commands[-10:]])

        # the policy's own set points (not only hover, which fills ticks while inference catches up)
        wait_for(lambda: status_of(statuses) == "live" and len(commands) > 20 and np.any(recent() != 0.0), 90,
                 what="live commands from the policy")
        assert np.all(np.abs(recent()) <= 1.0)  # within the profile limits
        # Inference runs in a worker process (the default): torch is loaded there, never in the node.
        worker = int(re.search(r"inference in worker process (\d+)", node.log()).group(1))
        assert loads_torch(worker) and not loads_torch(node.process.pid)

        reply = ros_node.call(Trigger, "policy/estop")
        assert reply.success and "latched" in reply.message
        wait_for(lambda: status_of(statuses) == "estopped", 5, what="estopped status")
        mark = len(commands)
        time.sleep(1.0)
        held = [convert.twist_to_setpoint(m) for _, m in commands[mark:]]
        # A quadrotor is never left without set points: it hovers. The count is not a rate check (rates are
        # benchmarked in bench/ros_latency.py); a busy 2-core machine has delivered as few as 18 per second.
        assert len(held) >= 5
        assert np.all(np.array(held) == 0.0)

        reply = ros_node.call(Trigger, "policy/reset_estop")
        assert reply.success, reply.message
        wait_for(lambda: status_of(statuses) == "live", 10, what="live again after reset_estop")

        sensors.running.clear()  # odometry stops: stale after obs_timeout_s (0.2 s)
        wait_for(lambda: status_of(statuses) == "held", 5, what="held status")
        assert "old" in json.loads(statuses[-1][1].data)["detail"] or "no observation" in statuses[-1][1].data
        mark = len(commands)
        time.sleep(0.5)
        stale = [convert.twist_to_setpoint(m) for _, m in commands[mark:]]
        assert len(stale) >= 15 and np.all(np.array(stale) == 0.0)
        reply = ros_node.call(Trigger, "policy/estop")
        assert ros_node.call(Trigger, "policy/reset_estop").success is False  # refused while input is stale

        m = json.loads(metrics[-1][1].data)
        assert m["counters"]["chunks"] > 0 and m["inference_ms"]["p50"] > 0
    finally:
        sensors.stop()
    assert node.running(), node.log()


def loads_torch(pid: int) -> bool:
    """Whether the process has torch's C++ library mapped."""
    return "libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text()


def test_arm_estop_and_silence_on_stale_input(launch_node, ros_node, tiny_checkpoints):
    ckpt, store = tiny_checkpoints["arm"]
    state = first_state(store)  # a real Lift-joint state: ee pose | fingers | joints | cube
    sensors = Sensors(ros_node, arm_sensors(ros_node, state), 20.0)
    commands, statuses, _ = listen(ros_node, JointTrajectory, "joint_trajectory")
    # The in-process runner (inference_process false), the choice for a node that owns its GPU.
    node = launch_node("robopolicy-policy-node", {"checkpoint": ckpt, "profile": "sim_panda", "torch_threads": 1,
                                                  "inference_process": False})
    try:
        wait_for(lambda: len(commands) > 10, 90, what="joint trajectories")
        assert loads_torch(node.process.pid) and "worker process" not in node.log()
        msg = commands[-1][1]
        assert msg.joint_names == ARM_JOINTS + ["panda_gripper"]  # gripper last, in the same message
        assert len(msg.points) == 1 and convert.duration_to_seconds(msg.points[0].time_from_start) == 0.05
        first = np.array(commands[0][1].points[0].positions)
        # The first command is guarded against the measured joints: within one ramped step of them.
        assert np.max(np.abs(first[:7] - state[9:16])) <= 2.61 * 0.05 + 1e-6

        assert ros_node.call(Trigger, "policy/estop").success
        wait_for(lambda: status_of(statuses) == "estopped", 5, what="estopped status")
        time.sleep(0.1)
        mark = len(commands)
        time.sleep(0.5)
        assert len(commands) == mark  # an arm holds by silence, never by a zero command
        # reset is refused while the newest observation is older than obs_timeout_s; on a busy machine the
        # test's own sensor thread can lag that long, so ask again until it is fresh
        wait_for(lambda: ros_node.call(Trigger, "policy/reset_estop").success, 10, what="reset_estop accepted")
        wait_for(lambda: len(commands) > mark + 5, 10, what="commands after reset_estop")

        sensors.running.clear()
        wait_for(lambda: status_of(statuses) == "held", 5, what="held status")
        time.sleep(0.1)
        mark = len(commands)
        time.sleep(0.5)
        assert len(commands) == mark
        sensors.running.set()
        wait_for(lambda: len(commands) > mark, 10, what="commands once input is fresh again")
    finally:
        sensors.stop()
    assert node.running(), node.log()
