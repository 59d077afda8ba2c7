"""The sim bridge's cameras over DDS: depth images and a world-frame point cloud, read back by the same
observation assembler the policy node uses (profile sim_panda)."""

import time

import numpy as np
import pytest

pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseArray, PoseStamped  # noqa: E402
from sensor_msgs.msg import Image, JointState, PointCloud2  # noqa: E402

from hardware.profile import load_profile  # noqa: E402
from ros_nodes import convert  # noqa: E402
from ros_nodes.harness import wait_alive  # noqa: E402
from ros_nodes.observation import ObservationAssembler  # noqa: E402
from ros_nodes.qos import SENSOR_QOS  # noqa: E402

LIFT = "robopolicy/robosuite-Lift-joint-v0"
TOPICS = {"joint_states": JointState, "ee_pose": PoseStamped, "object_poses": PoseArray,
          "camera/agentview/depth": Image, "points": PointCloud2}


def test_bridge_publishes_depth_and_a_world_point_cloud(launch_node, ros_node):
    received = {topic: ros_node.collect(cls, topic, SENSOR_QOS) for topic, cls in TOPICS.items()}
    bridge = launch_node("robopolicy-sim-bridge", {"task": LIFT, "cameras": "agentview", "depth": True,
                                                   "points": True, "num_points": 256, "image_size": 64,
                                                   "auto_start": False})
    wait_alive(lambda: all(received.values()), 120, "depth, points and state from the bridge", bridge)
    assembler = ObservationAssembler(load_profile("sim_panda"),
                                     {"state": (23,), "depth_agentview": (64, 64), "points": (256, 3)})
    for topic, messages in received.items():
        assembler.update(topic, messages[-1][1], time.monotonic())
    obs, _ = assembler.assemble()

    depth = obs["depth_agentview"]
    assert depth.shape == (64, 64) and depth.dtype == np.float32
    assert np.all(np.isfinite(depth)) and 0.3 < np.median(depth) < 5.0  # metres from the agentview camera
    points = obs["points"]
    assert points.shape == (256, 3) and np.all(np.isfinite(points))
    low, high = np.array([-0.4, -0.4, 0.8]), np.array([0.4, 0.4, 1.3])  # the Lift workspace crop
    assert np.all(points >= low) and np.all(points <= high)
    # the cloud is in the world frame: some of its points lie on the cube, where object_poses puts it
    cube = obs["state"][16:19]
    assert np.min(np.linalg.norm(points - cube, axis=1)) < 0.04, cube
    assert convert.pointcloud2_to_array(received["points"][-1][1]).shape == (256, 3)
