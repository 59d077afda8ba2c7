"""The policy node as a separate process over DDS: refusal, e-stop services, holding on stale input.

The test plays the robot: it publishes real sensor messages at the control rate, and listens to the
node's commands, status and metrics.
"""

import json
import shutil
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseArray, PoseStamped, TwistStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from robopolicy.store import DemoStore  # noqa: E402
from ros_nodes import convert  # noqa: E402
from ros_nodes.qos import STATUS_QOS  # noqa: E402
from tests.ros.conftest import wait_for  # noqa: E402

ARM_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]


class Sensors:
    """Publishes ``make(now) -> [(publisher, msg), ...]`` at ``rate_hz`` until paused or stopped."""

    def __init__(self, ros, make, rate_hz):
        self.ros, self.make, self.period = ros, make, 1.0 / rate_hz
        self.running, self.stopped = threading.Event(), threading.Event()
        self.running.set()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopped.is_set():
            if self.running.is_set():
                now = self.ros.node.get_clock().now().nanoseconds * 1e-9
                for pub, msg in self.make(now):
                    pub.publish(msg)
            time.sleep(self.period)

    def stop(self):
        self.stopped.set()
        self.thread.join()


def first_state(store) -> np.ndarray:
    return np.asarray(DemoStore.open(store).load(["state"])["state"][0], dtype=np.float64)


def status_of(statuses):
    return json.loads(statuses[-1][1].data)["state"] if statuses else None


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

    assert node.wait_exit(timeout=90) == 2
    log = node.log()
    assert "refused to start" in log and "'state' has 13 values" in log
    assert "'velocity_setpoint', this robot takes 'joint_pos'" in log and "4-d actions" in log
    assert other.wait_exit(timeout=90) == 2
    assert "observation keys ['image_wrist'] are not supplied by this robot" in other.log()


def test_quadrotor_estop_reset_and_hover_on_stale_odometry(launch_node, ros_node, tiny_checkpoints):
    ckpt, store = tiny_checkpoints["quadrotor"]
    state = first_state(store)
    odom_pub = ros_node.node.create_publisher(Odometry, "odom", 10)
    sensors = Sensors(ros_node, lambda now: [(odom_pub, convert.state_to_odometry(state, now))], 50.0)
    commands, statuses, metrics = listen(ros_node, TwistStamped, "cmd_vel")
    node = launch_node("robopolicy-policy-node", {"checkpoint": ckpt, "profile": "sim_quadrotor",
                                                  "torch_threads": 1})
    try:
        wait_for(lambda: status_of(statuses) == "live" and len(commands) > 20, 90, what="live commands")
        live = np.array([convert.twist_to_setpoint(m) for _, m in commands[-10:]])
        assert np.all(np.abs(live) <= 1.0) and np.any(live != 0.0)  # the policy's, within the profile limits

        reply = ros_node.call(Trigger, "policy/estop")
        assert reply.success and "latched" in reply.message
        wait_for(lambda: status_of(statuses) == "estopped", 5, what="estopped status")
        mark = len(commands)
        time.sleep(0.5)
        held = [convert.twist_to_setpoint(m) for _, m in commands[mark:]]
        assert len(held) >= 15  # a quadrotor is never left without set points: it hovers
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


def test_arm_estop_and_silence_on_stale_input(launch_node, ros_node, tiny_checkpoints):
    ckpt, store = tiny_checkpoints["arm"]
    state = first_state(store)  # a real Lift-joint state: ee pose | fingers | joints | cube
    pubs = {t: ros_node.node.create_publisher(c, t, 10) for t, c in
            (("joint_states", JointState), ("ee_pose", PoseStamped), ("object_poses", PoseArray))}

    def make(now):
        joints = convert.joint_state(ARM_JOINTS + ["panda_finger_joint1", "panda_finger_joint2"],
                                     np.concatenate([state[9:16], state[7:9]]), now)
        return [(pubs["joint_states"], joints), (pubs["ee_pose"], convert.pose_stamped(state[:7], now)),
                (pubs["object_poses"], convert.array_to_posearray(state[16:], now))]

    sensors = Sensors(ros_node, make, 20.0)
    commands, statuses, _ = listen(ros_node, JointTrajectory, "joint_trajectory")
    node = launch_node("robopolicy-policy-node", {"checkpoint": ckpt, "profile": "sim_panda", "torch_threads": 1})
    try:
        wait_for(lambda: len(commands) > 10, 90, what="joint trajectories")
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
        assert ros_node.call(Trigger, "policy/reset_estop").success
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
