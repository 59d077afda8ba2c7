"""The test plays the robot: real sensor messages at a rate, from a real state of the task's store.

``Sensors(ros, make, rate_hz, burst)`` publishes ``make(now) -> [(publisher, msg), ...]`` ``burst`` times
per period (``burst > 1`` floods the topics) until paused (``running.clear()``) or stopped.
``arm_sensors`` / ``quadrotor_sensors`` build the messages a Panda (sim_panda) or a quadrotor
(sim_quadrotor) would send, in a namespace.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped
from nav_msgs.msg import Odometry
from sensor_msgs.msg import JointState

from robopolicy.store import DemoStore
from ros_nodes import convert

ARM_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
FINGERS = ["panda_finger_joint1", "panda_finger_joint2"]


class Sensors:
    """Publishes ``make(now) -> [(publisher, msg), ...]`` ``burst`` times every ``1 / rate_hz`` s."""

    def __init__(self, ros, make, rate_hz: float, burst: int = 1):
        self.ros, self.make, self.period, self.burst = ros, make, 1.0 / rate_hz, burst
        self.running, self.stopped = threading.Event(), threading.Event()
        self.running.set()
        self.sent = 0  # messages published
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        next_tick = time.monotonic()
        while not self.stopped.is_set():
            if self.running.is_set():
                for _ in range(self.burst):
                    now = self.ros.node.get_clock().now().nanoseconds * 1e-9
                    for pub, msg in self.make(now):
                        pub.publish(msg)
                        self.sent += 1
            next_tick = max(next_tick + self.period, time.monotonic())
            time.sleep(max(next_tick - time.monotonic(), 0.0))

    def stop(self):
        self.stopped.set()
        self.thread.join()


def first_state(store) -> np.ndarray:
    return np.asarray(DemoStore.open(store).load(["state"])["state"][0], dtype=np.float64)


def arm_sensors(ros, state: np.ndarray, ns: str = ""):
    """``make(now)`` for a Lift-joint state (ee pose | fingers | joints | cube): joint_states, ee_pose,
    object_poses under namespace ``ns``."""
    pubs = {t: ros.node.create_publisher(c, f"{ns}/{t}" if ns else t, 10) for t, c in
            (("joint_states", JointState), ("ee_pose", PoseStamped), ("object_poses", PoseArray))}

    def make(now):
        joints = convert.joint_state(ARM_JOINTS + FINGERS, np.concatenate([state[9:16], state[7:9]]), now)
        return [(pubs["joint_states"], joints), (pubs["ee_pose"], convert.pose_stamped(state[:7], now)),
                (pubs["object_poses"], convert.array_to_posearray(state[16:], now))]

    return make


def quadrotor_sensors(ros, state: np.ndarray, ns: str = ""):
    """``make(now)`` for a quadrotor state: odom under namespace ``ns``."""
    pub = ros.node.create_publisher(Odometry, f"{ns}/odom" if ns else "odom", 10)
    return lambda now: [(pub, convert.state_to_odometry(state, now))]


def status_of(statuses):
    return json.loads(statuses[-1][1].data)["state"] if statuses else None


def last_json(messages) -> dict:
    return json.loads(messages[-1][1].data) if messages else {}
